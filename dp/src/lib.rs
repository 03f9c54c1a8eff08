//! Differential privacy for fedcrm (issue 10): pure, no I/O, no clock.
//!
//! - [`sampler`]: exact sampling of the discrete Gaussian on the node (Canonne, Kamath &
//!   Steinke 2020), in integer and rational arithmetic only, from the OS CSPRNG.
//! - [`accounting`]: what a noised release costs in zero-concentrated DP, with the τ
//!   term of the distributed discrete Gaussian (Kairouz, Liu & Steinke 2021), composed
//!   over passes and analyses and converted to (ε, δ).
//! - [`budget`]: a node's monthly budget and the ledger of what it spent.
//! - [`vector`]: the distributed discrete Gaussian mechanism for real vectors (Kairouz,
//!   Liu & Steinke 2021, Algorithm 1): clip, random rotation, scale, conditional
//!   randomized rounding and noise on the node; decoding of the sum on the coordinator;
//!   the inflated sensitivity of their Theorem 1 and its charge over many rounds.
//!
//! Noise is added **on the nodes**, before masking: neither HQ nor anyone else ever
//! sees an un-noised sum.

pub mod accounting;
pub mod budget;
pub mod sampler;
pub mod vector;

/// What can go wrong while sampling or accounting.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DpError {
    #[error("the system random number generator failed")]
    Random,
    #[error("invalid noise parameter: {0}")]
    Parameter(String),
    #[error("a noise sample does not fit in 64 bits (σ is far too large for a count)")]
    Overflow,
}

/// A source of uniformly random bytes: the OS CSPRNG in production ([`OsEntropy`]), a
/// seeded generator in the sampler's statistical tests.
pub trait Entropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), DpError>;
}

/// The operating system's CSPRNG (`getrandom`, through ring).
#[derive(Debug)]
pub struct OsEntropy(ring::rand::SystemRandom);

impl Default for OsEntropy {
    fn default() -> Self {
        Self::new()
    }
}

impl OsEntropy {
    pub fn new() -> Self {
        Self(ring::rand::SystemRandom::new())
    }
}

impl Entropy for OsEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), DpError> {
        ring::rand::SecureRandom::fill(&self.0, dest).map_err(|_| DpError::Random)
    }
}
