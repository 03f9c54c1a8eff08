//! fedcrm cryptographic core: the pure parts of secure aggregation (Bonawitz et al.
//! 2017, "Practical Secure Aggregation for Privacy-Preserving Machine Learning").
//!
//! Never does I/O, never reads a clock, never spawns tasks: every function takes its
//! randomness as a `&dyn SecureRandom` and its context (protocol version, round id,
//! party names) as arguments, so the same inputs give the same outputs in tests.
//!
//! Layout: [`prg`] expands seeds into masks, [`shamir`] splits secrets t-of-n,
//! [`kdf`] and [`aead`] derive and use per-pair keys, [`keys`] holds the per-round
//! X25519 key pairs, [`fixed`] encodes values into Z_2^64 with an overflow budget,
//! [`word`] names a round's word width (Z_2^32 or Z_2^64), and [`secagg`] puts them
//! together into the client and server sides of a round. [`graph`] is SecAgg+'s sparse
//! communication graph (Bell et al. CCS 2020): the committed nonces its seed comes
//! from, the random Harary graph and its parameters. [`multiround`] runs the many
//! rounds of one analysis on one X25519 agreement per pair of neighbours, made once at
//! the analysis's setup (each round derives its pair seeds from it and shares only a
//! fresh self-mask seed; cf. Flamingo, Ma et al. IEEE S&P 2023). [`psi`] holds the pure
//! parts of ECDH-PSI cardinality over ristretto255 (issue 12): hash to group, blinding
//! keys, blinding in batches on all cores, padding to buckets and shuffling.

#![forbid(unsafe_code)]

pub mod aead;
pub mod fixed;
pub mod graph;
pub mod kdf;
pub mod keys;
pub mod multiround;
pub mod prg;
pub mod psi;
pub mod secagg;
pub mod shamir;
pub mod word;

pub use ring::rand::{SecureRandom, SystemRandom};

/// Protocol version bound into every derivation, signature and associated data.
pub const PROTOCOL_VERSION: &str = "fedcrm/v1";

/// A round identifier chosen by the coordinator (128 random bits), bound into every
/// key derivation so that nothing derived for one round is valid in another.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoundId(pub [u8; 16]);

impl RoundId {
    /// A fresh random round id.
    pub fn random(rng: &dyn SecureRandom) -> Result<Self, CryptoError> {
        let mut b = [0u8; 16];
        rng.fill(&mut b).map_err(|_| CryptoError::Random)?;
        Ok(Self(b))
    }

    /// Lower-case hex, as shown in logs.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for RoundId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RoundId({})", self.to_hex())
    }
}

impl std::fmt::Display for RoundId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Errors of the cryptographic core. Messages never contain secret bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("system random number generator failed")]
    Random,
    #[error("authenticated decryption failed: wrong key, wrong context or tampered ciphertext")]
    Decrypt,
    #[error("invalid threshold: t={t} must satisfy 1 < t <= n={n} and t > n/2")]
    Threshold { t: usize, n: usize },
    #[error("need at least {t} shares to reconstruct, got {got}")]
    TooFewShares { t: usize, got: usize },
    #[error("duplicate share for x={x}")]
    DuplicateShare { x: u32 },
    #[error("malformed share: {0}")]
    MalformedShare(&'static str),
    #[error("malformed public key: {0}")]
    MalformedKey(&'static str),
    #[error("vector length {got} differs from the round's length {expected}")]
    Length { got: usize, expected: usize },
    #[error("overflow budget exceeded: {n} contributions of magnitude up to {max} do not fit in 63 bits")]
    Overflow { n: u64, max: u64 },
    #[error(
        "value {value} at index {index} does not fit the round's {bits}-bit words; the round's range is wrong (the coordinator must pick wider words)"
    )]
    WordTooNarrow { index: usize, value: u64, bits: u32 },
    #[error("masked vector of {got}-bit words, but the round uses {expected}-bit words")]
    Width { got: u32, expected: u32 },
    #[error("{0}")]
    Protocol(String),
}
