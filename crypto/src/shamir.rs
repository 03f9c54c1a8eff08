//! Shamir secret sharing (Shamir 1979) of 32-byte secrets, t-of-n, over the prime
//! field of the ristretto255 / ed25519 group order ℓ (curve25519-dalek `Scalar`,
//! constant-time arithmetic). Pure: no I/O.
//!
//! A 32-byte secret is split into two 16-byte halves; each half is a field element
//! (2^128 < ℓ) shared with its own random polynomial of degree t−1. Share `x`
//! coordinates are 1..=n (a node's position in the round roster plus one).

use curve25519_dalek::scalar::Scalar;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{CryptoError, SecureRandom};

/// Encoded length of one share's `y` part: two canonical scalars.
pub const SHARE_Y_LEN: usize = 64;

/// One share of a 32-byte secret. Zeroized on drop; `Debug` shows only `x`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    pub x: u32,
    y: [Scalar; 2],
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share(x={}, ..)", self.x)
    }
}

impl Share {
    /// `y` as 64 bytes (two canonical little-endian scalars).
    pub fn y_bytes(&self) -> [u8; SHARE_Y_LEN] {
        let mut out = [0u8; SHARE_Y_LEN];
        out[..32].copy_from_slice(self.y[0].as_bytes());
        out[32..].copy_from_slice(self.y[1].as_bytes());
        out
    }

    /// Parse a share; rejects `x = 0` and non-canonical scalars.
    pub fn from_parts(x: u32, y: &[u8]) -> Result<Self, CryptoError> {
        if x == 0 {
            return Err(CryptoError::MalformedShare("x must be non-zero"));
        }
        if y.len() != SHARE_Y_LEN {
            return Err(CryptoError::MalformedShare("y must be 64 bytes"));
        }
        let parse = |b: &[u8]| -> Result<Scalar, CryptoError> {
            // Unwrap safety: callers pass exactly 32-byte slices.
            Option::from(Scalar::from_canonical_bytes(b.try_into().unwrap()))
                .ok_or(CryptoError::MalformedShare("y is not a canonical scalar"))
        };
        Ok(Self { x, y: [parse(&y[..32])?, parse(&y[32..])?] })
    }
}

fn random_scalar(rng: &dyn SecureRandom) -> Result<Scalar, CryptoError> {
    let mut wide = [0u8; 64];
    rng.fill(&mut wide).map_err(|_| CryptoError::Random)?;
    let s = Scalar::from_bytes_mod_order_wide(&wide);
    wide.zeroize();
    Ok(s)
}

fn halves(secret: &[u8; 32]) -> [Scalar; 2] {
    let mut lo = [0u8; 32];
    let mut hi = [0u8; 32];
    lo[..16].copy_from_slice(&secret[..16]);
    hi[..16].copy_from_slice(&secret[16..]);
    let out = [Scalar::from_bytes_mod_order(lo), Scalar::from_bytes_mod_order(hi)];
    lo.zeroize();
    hi.zeroize();
    out
}

/// Split `secret` into `n` shares with `x = 1..=n`, any `t` of which reconstruct it.
///
/// Shamir 1979: a random polynomial of degree t−1 per half, evaluated at x = 1..=n.
/// Bonawitz et al. CCS 2017, Fig. 4, Round 1 (ShareKeys), user: SS.share.
pub fn split(secret: &[u8; 32], t: usize, n: usize, rng: &dyn SecureRandom) -> Result<Vec<Share>, CryptoError> {
    if n > u32::MAX as usize {
        return Err(CryptoError::Threshold { t, n });
    }
    let xs: Vec<u32> = (1..=n as u32).collect();
    split_at(secret, t, &xs, rng)
}

/// Split `secret` into one share per `x` in `xs` (distinct and non-zero), any `t` of
/// which reconstruct it: the holders need not be numbered 1..=n. SecAgg+ gives shares
/// only to a node's neighbours, each at its own roster position.
///
/// Shamir 1979, as [`split`]; Bell et al. CCS 2020, Fig. 2 (SecAgg+), Round 1: shares to
/// the neighbours N_G(i) only.
pub fn split_at(secret: &[u8; 32], t: usize, xs: &[u32], rng: &dyn SecureRandom) -> Result<Vec<Share>, CryptoError> {
    let n = xs.len();
    if t < 1 || t > n {
        return Err(CryptoError::Threshold { t, n });
    }
    for (i, x) in xs.iter().enumerate() {
        if *x == 0 {
            return Err(CryptoError::Protocol("a Shamir share at x = 0 would be the secret itself".into()));
        }
        if xs[..i].contains(x) {
            return Err(CryptoError::DuplicateShare { x: *x });
        }
    }
    let constant = halves(secret);
    // coeffs[h][k]: coefficient of x^k of the polynomial for half h.
    let mut coeffs: Vec<[Scalar; 2]> = Vec::with_capacity(t);
    coeffs.push(constant);
    for _ in 1..t {
        coeffs.push([random_scalar(rng)?, random_scalar(rng)?]);
    }
    let shares = xs
        .iter()
        .map(|&x| {
            let xs = Scalar::from(x);
            let mut y = [Scalar::ZERO; 2];
            // Horner's rule from the highest coefficient down.
            for c in coeffs.iter().rev() {
                y[0] = y[0] * xs + c[0];
                y[1] = y[1] * xs + c[1];
            }
            Share { x, y }
        })
        .collect();
    coeffs.zeroize();
    Ok(shares)
}

/// Reconstruct from at least `t` shares with distinct `x` (Lagrange at 0). With more
/// than `t` shares, the first `t` are used.
///
/// Shamir 1979: Lagrange interpolation at 0.
/// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), server: SS.recon.
pub fn combine(shares: &[Share], t: usize) -> Result<[u8; 32], CryptoError> {
    if shares.len() < t || t == 0 {
        return Err(CryptoError::TooFewShares { t, got: shares.len() });
    }
    let used = &shares[..t];
    for (i, a) in used.iter().enumerate() {
        if used[..i].iter().any(|b| b.x == a.x) {
            return Err(CryptoError::DuplicateShare { x: a.x });
        }
    }
    // Lagrange basis at 0: l_i = Π_{j≠i} x_j / (x_j − x_i). The t denominators are
    // inverted together (one field inversion instead of t).
    let xs: Vec<Scalar> = used.iter().map(|s| Scalar::from(s.x)).collect();
    let mut nums = Vec::with_capacity(t);
    let mut dens = Vec::with_capacity(t);
    for (i, xi) in xs.iter().enumerate() {
        let mut num = Scalar::ONE;
        let mut den = Scalar::ONE;
        for (j, xj) in xs.iter().enumerate() {
            if i != j {
                num *= xj;
                den *= xj - xi;
            }
        }
        nums.push(num);
        dens.push(den);
    }
    Scalar::invert_batch_alloc(&mut dens);
    let mut acc = [Scalar::ZERO; 2];
    for ((si, num), inv) in used.iter().zip(&nums).zip(&dens) {
        let l = num * inv;
        acc[0] += l * si.y[0];
        acc[1] += l * si.y[1];
    }
    let mut out = [0u8; 32];
    for (h, s) in acc.iter().enumerate() {
        let b = s.as_bytes();
        if b[16..].iter().any(|&x| x != 0) {
            // A genuine secret half is < 2^128; anything else means inconsistent shares.
            return Err(CryptoError::MalformedShare("shares are inconsistent (reconstructed value out of range)"));
        }
        out[h * 16..h * 16 + 16].copy_from_slice(&b[..16]);
    }
    acc.zeroize();
    Ok(out)
}
