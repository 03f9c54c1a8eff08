//! Authenticated encryption of Shamir shares between two nodes: ChaCha20-Poly1305
//! from ring. Pure: no I/O.
//!
//! Each key is derived for exactly one (round, sender, receiver) triple and seals
//! exactly one message, so a fixed all-zero nonce is safe; the full context is also
//! the associated data, so a ciphertext moved to another round or pair fails to open.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

use zeroize::Zeroize;

use crate::CryptoError;
use crate::kdf::DerivedKey;

/// Seal `plaintext` under `key` with `context` as associated data.
///
/// RFC 8439, §2.8 (AEAD_CHACHA20_POLY1305).
/// Bonawitz et al. CCS 2017, Fig. 4, Round 1 (ShareKeys), user: AE.enc.
pub fn seal(key: &DerivedKey, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
    // Unwrap safety: the key is 32 bytes, the length CHACHA20_POLY1305 requires.
    let key = LessSafeKey::new(UnboundKey::new(&aead::CHACHA20_POLY1305, key.bytes()).unwrap());
    let mut buf = plaintext.to_vec();
    // Unwrap safety: sealing only fails for messages longer than 256 GiB.
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key([0u8; 12]), Aad::from(context), &mut buf).unwrap();
    buf
}

/// Open a ciphertext made by [`seal`] with the same key and context.
///
/// RFC 8439, §2.8 (AEAD_CHACHA20_POLY1305).
/// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), user: AE.dec (called in Round 2 here).
pub fn open(key: &DerivedKey, context: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    // Unwrap safety: the key is 32 bytes, the length CHACHA20_POLY1305 requires.
    let key = LessSafeKey::new(UnboundKey::new(&aead::CHACHA20_POLY1305, key.bytes()).unwrap());
    let mut buf = ciphertext.to_vec();
    let out = key
        .open_in_place(Nonce::assume_unique_for_key([0u8; 12]), Aad::from(context), &mut buf)
        .map(|plain| plain.to_vec())
        .map_err(|_| CryptoError::Decrypt);
    // The buffer held the plaintext (Shamir shares): wipe it before freeing.
    buf.zeroize();
    out
}
