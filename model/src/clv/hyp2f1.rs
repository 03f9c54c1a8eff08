//! The Gaussian hypergeometric function ₂F₁(a, b; c; z) for 0 ≤ z < 1, by its power
//! series (Abramowitz & Stegun 15.1.1), which the BG/NBD model's conditional expectations
//! need (Fader, Hardie & Lee 2005, eq. 10) with z = t/(α + T + t) < 1.
//!
//! The terms t₀ = 1, t_{n+1} = t_n · (a + n)(b + n) / ((c + n)(n + 1)) · z are summed
//! until the rest of the series — bounded by the term times ρ/(1 − ρ), ρ the larger of
//! the last ratio of successive terms and z (the ratios tend to z) — can no longer change
//! the sum in double precision. The series converges for |z| < 1 (like zⁿ · n^(a+b−c−1)); near z = 1 it
//! needs many terms, and after [`MAX_TERMS`] it gives up with an error rather than a
//! wrong value.

/// The most terms summed before giving up.
pub const MAX_TERMS: usize = 1_000_000;

/// Why ₂F₁ was not computed.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Hyp2f1Error {
    #[error("2F1: z = {z} is outside [0, 1), where its series converges")]
    Domain { z: f64 },
    #[error("2F1: c = {c} is zero or a negative integer (the series has a pole)")]
    Pole { c: f64 },
    #[error("2F1(a = {a}, b = {b}; c = {c}; z = {z}) did not converge in {MAX_TERMS} terms")]
    NotConverged { a: f64, b: f64, c: f64, z: f64 },
    #[error("2F1: an argument is not a finite number")]
    NotFinite,
}

/// ₂F₁(a, b; c; z) for 0 ≤ z < 1 and c not in {0, −1, −2, …}.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Result<f64, Hyp2f1Error> {
    if ![a, b, c, z].iter().all(|v| v.is_finite()) {
        return Err(Hyp2f1Error::NotFinite);
    }
    if !(0.0..1.0).contains(&z) {
        return Err(Hyp2f1Error::Domain { z });
    }
    if c <= 0.0 && c.fract().abs() < f64::EPSILON {
        return Err(Hyp2f1Error::Pole { c });
    }
    let (mut sum, mut term) = (1.0f64, 1.0f64);
    // Kahan compensation: the terms may alternate in sign for negative a or b.
    let mut carry = 0.0f64;
    for n in 0..MAX_TERMS {
        let n = n as f64;
        let ratio = (a + n) * (b + n) / ((c + n) * (n + 1.0)) * z;
        term *= ratio;
        if term == 0.0 {
            return Ok(sum);
        }
        let y = term - carry;
        let next = sum + y;
        carry = (next - sum) - y;
        sum = next;
        // The ratio of successive terms tends to z; the tail after this term is at most
        // |term|·ρ/(1 − ρ) for ρ the larger of this ratio and z, once ρ < 1.
        let rho = ratio.abs().max(z);
        if rho < 1.0 && (term * rho / (1.0 - rho)).abs() <= f64::EPSILON * 0.5 * sum.abs() {
            return Ok(sum);
        }
    }
    Err(Hyp2f1Error::NotConverged { a, b, c, z })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, rel: f64) {
        assert!((got - want).abs() <= rel * want.abs().max(1e-300), "got {got}, want {want}");
    }

    /// Published closed forms (Abramowitz & Stegun 15.1.3–15.1.8; DLMF 15.4) and
    /// published decimal values.
    #[test]
    fn the_series_matches_published_closed_forms_and_values() {
        for &z in &[0.0, 1e-6, 0.1, 0.3, 0.5, 0.75, 0.9, 0.99, 0.999] {
            // A&S 15.1.3: F(1, 1; 2; z) = −ln(1 − z)/z.
            if z > 0.0 {
                close(hyp2f1(1.0, 1.0, 2.0, z).unwrap(), -(-z).ln_1p() / z, 1e-13);
            }
            // A&S 15.1.8: F(a, b; b; z) = (1 − z)^(−a).
            close(hyp2f1(0.37, 2.5, 2.5, z).unwrap(), (1.0 - z).powf(-0.37), 1e-13);
            let s = z.sqrt();
            if s > 0.0 {
                // A&S 15.1.4: F(1/2, 1; 3/2; z²) = artanh(z)/z.
                close(hyp2f1(0.5, 1.0, 1.5, z).unwrap(), s.atanh() / s, 1e-12);
                // A&S 15.1.6: F(1/2, 1/2; 3/2; z²) = arcsin(z)/z.
                close(hyp2f1(0.5, 0.5, 1.5, z).unwrap(), s.asin() / s, 1e-12);
            }
        }
        // A&S 15.1.15 at z = 1/2: F(a, 1 − a; c; 1/2) = 2^(1−c) √π Γ(c) / (Γ((a+c)/2) Γ((1−a+c)/2)).
        use statrs::function::gamma::gamma;
        let (a, c) = (0.3, 1.7);
        let want = 2f64.powf(1.0 - c) * std::f64::consts::PI.sqrt() * gamma(c)
            / (gamma((a + c) / 2.0) * gamma((1.0 - a + c) / 2.0));
        close(hyp2f1(a, 1.0 - a, c, 0.5).unwrap(), want, 1e-12);
        // A polynomial: F(−2, b; c; z) = 1 − 2bz/c + b(b+1)z²/(c(c+1)).
        let (b, c, z) = (1.5, 2.5, 0.4);
        close(hyp2f1(-2.0, b, c, z).unwrap(), 1.0 - 2.0 * b * z / c + b * (b + 1.0) * z * z / (c * (c + 1.0)), 1e-14);
    }

    #[test]
    fn outside_its_domain_it_says_why_instead_of_guessing() {
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, 1.0), Err(Hyp2f1Error::Domain { z: 1.0 }));
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, -0.5), Err(Hyp2f1Error::Domain { z: -0.5 }));
        assert_eq!(hyp2f1(1.0, 1.0, -2.0, 0.5), Err(Hyp2f1Error::Pole { c: -2.0 }));
        assert_eq!(hyp2f1(f64::NAN, 1.0, 2.0, 0.5), Err(Hyp2f1Error::NotFinite));
        // So close to 1 that a million terms do not settle it.
        assert!(matches!(hyp2f1(1.0, 1.0, 1.5, 1.0 - 1e-9), Err(Hyp2f1Error::NotConverged { .. })));
    }
}
