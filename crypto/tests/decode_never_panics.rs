//! Everything that parses bytes from the network must return `Err`, never panic, on
//! arbitrary input: Shamir shares, X25519 public keys, sealed shares, a PSI peer's list
//! of encoded points.

use curve25519_dalek::ristretto::CompressedRistretto;
use fedcrm_crypto::keys::{RoundPublic, RoundSecret};
use fedcrm_crypto::psi::{self, BlindingKey, Domain, PsiError};
use fedcrm_crypto::shamir::{self, SHARE_Y_LEN, Share};
use fedcrm_crypto::{CryptoError, aead, kdf};
use proptest::collection::vec;
use proptest::prelude::*;

/// Byte strings biased towards the interesting lengths (exactly right, one off).
fn bytes_around(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), len),
        1 => vec(any::<u8>(), len - 1),
        1 => vec(any::<u8>(), len + 1),
        1 => vec(any::<u8>(), 0..3 * len),
        // Small values: canonical scalars / low-order-ish points.
        1 => vec(0u8..3, len),
        // All-high bytes: non-canonical scalars, u-coordinates ≥ p.
        1 => vec(0xf0u8..=0xff, len),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn share_from_parts_never_panics(x in prop_oneof![Just(0u32), any::<u32>()], y in bytes_around(SHARE_Y_LEN)) {
        match Share::from_parts(x, &y) {
            Ok(s) => {
                prop_assert!(x != 0 && y.len() == SHARE_Y_LEN);
                prop_assert_eq!(s.x, x);
                // Only canonical encodings are accepted, so they round-trip exactly.
                prop_assert_eq!(&s.y_bytes()[..], &y[..]);
            }
            Err(e) => prop_assert!(matches!(e, CryptoError::MalformedShare(_)), "{}", e),
        }
    }

    #[test]
    fn combine_never_panics(
        raw in vec((0u32..6, bytes_around(SHARE_Y_LEN)), 0..6),
        t in 0usize..6,
        zero_x in any::<bool>(),
    ) {
        let mut shares: Vec<Share> = raw.iter().filter_map(|(x, y)| Share::from_parts(*x, y).ok()).collect();
        if zero_x {
            // `x` is a public field: a share can be given x = 0 after parsing.
            if let Some(s) = shares.first_mut() {
                s.x = 0;
            }
        }
        let _ = shamir::combine(&shares, t);
    }

    #[test]
    fn round_public_from_slice_never_panics(b in bytes_around(32), k in any::<[u8; 32]>()) {
        match RoundPublic::from_slice(&b) {
            Ok(p) => {
                prop_assert!(b.len() == 32 && b.iter().any(|&x| x != 0));
                prop_assert_eq!(&p.0[..], &b[..]);
                // Agreement with any parsed key either works or is refused as low order.
                if let Err(e) = RoundSecret::from_bytes(k).agree(&p) {
                    prop_assert!(matches!(e, CryptoError::MalformedKey(_)), "{}", e);
                }
            }
            Err(e) => prop_assert!(matches!(e, CryptoError::MalformedKey(_)), "{}", e),
        }
    }

    #[test]
    fn aead_open_never_panics(
        ikm in vec(any::<u8>(), 0..48),
        info in vec(any::<u8>(), 0..48),
        aad in vec(any::<u8>(), 0..48),
        ct in prop_oneof![vec(any::<u8>(), 0..17), vec(any::<u8>(), 0..300)],
    ) {
        let key = kdf::derive(&ikm, &info);
        // A random string is a valid ChaCha20-Poly1305 ciphertext with probability 2^-128.
        prop_assert_eq!(aead::open(&key, &aad, &ct), Err(CryptoError::Decrypt));
    }

    #[test]
    fn aead_seal_open_roundtrip_and_bit_flips(
        ikm in vec(any::<u8>(), 0..48),
        aad in vec(any::<u8>(), 0..48),
        pt in vec(any::<u8>(), 0..200),
        flip in any::<(usize, u8)>(),
    ) {
        let key = kdf::derive(&ikm, b"decode_never_panics");
        let ct = aead::seal(&key, &aad, &pt);
        prop_assert_eq!(ct.len(), pt.len() + 16);
        prop_assert_eq!(aead::open(&key, &aad, &ct).unwrap(), pt);
        let mut bad = ct.clone();
        bad[flip.0 % ct.len()] ^= 1 << (flip.1 % 8);
        prop_assert_eq!(aead::open(&key, &aad, &bad), Err(CryptoError::Decrypt));
    }

    /// A peer's list (issue 12): random bytes, valid points, the identity and bytes
    /// above p, mixed. `reblind` either takes every point or names the first bad one.
    #[test]
    fn psi_reblind_never_panics(
        raw in vec(prop_oneof![
            3 => any::<[u8; 32]>(),
            3 => any::<u16>().prop_map(|i| psi::hash_to_group(&DOMAIN, &i.to_be_bytes()).compress().to_bytes()),
            1 => Just([0u8; 32]),
            1 => Just([0xffu8; 32]),
        ], 0..40),
    ) {
        let key = BlindingKey::generate(DOMAIN, &fedcrm_crypto::SystemRandom::new()).unwrap();
        let valid = |p: &[u8; 32]| *p != [0u8; 32] && CompressedRistretto(*p).decompress().is_some();
        match psi::reblind(&key, &raw) {
            Ok(out) => {
                prop_assert_eq!(out.len(), raw.len());
                prop_assert!(raw.iter().all(valid));
            }
            Err(PsiError::NonCanonical { index } | PsiError::Identity { index }) => {
                prop_assert!(index < raw.len() && !valid(&raw[index]));
                prop_assert!(raw[..index].iter().all(valid));
            }
            Err(e) => prop_assert!(false, "unexpected error: {}", e),
        }
    }
}

const DOMAIN: Domain = Domain { version: psi::VERSION, run_id: [1; 16] };
