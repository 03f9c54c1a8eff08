//! Statistical tests of the exact discrete Gaussian sampler (issue 10), with fixed seeds
//! so every run draws the same samples: at σ ∈ {0.5, 1, 3, 10, 100}, the sample mean
//! and variance against the exact ones, the frequency of every value in [−4σ, 4σ]
//! against the exact probability mass (χ², significance 10⁻³, bins of fewer than 5
//! expected merged with their neighbours), and the frequency beyond 4σ against its
//! exact probability. Floating point appears only here, to describe the distribution.

use fedcrm_dp::sampler::{DiscreteGaussian, Variance, bernoulli_exp_neg};
use fedcrm_dp::{DpError, Entropy};
use num_bigint::BigUint;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// Samples per σ.
const N: usize = 100_000;

/// A seeded ChaCha20 stream: reproducible samples.
struct Seeded(ChaCha20Rng);

impl Entropy for Seeded {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), DpError> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

fn seeded(seed: u64) -> Seeded {
    Seeded(ChaCha20Rng::seed_from_u64(seed))
}

/// The exact probability mass of N_Z(0, σ²) at x, normalised over |x| ≤ 40σ + 20
/// (the mass beyond is below 10⁻³⁰⁰).
fn pmf(sigma2: f64) -> impl Fn(i64) -> f64 {
    let reach = (40.0 * sigma2.sqrt()) as i64 + 20;
    let weight = move |x: i64| (-((x * x) as f64) / (2.0 * sigma2)).exp();
    let z: f64 = (-reach..=reach).map(weight).sum();
    move |x| weight(x) / z
}

/// The upper 10⁻³ critical value of χ² with `dof` degrees of freedom, by the
/// Wilson–Hilferty approximation (z = 3.0902), checked against tables below.
fn chi2_critical(dof: usize) -> f64 {
    let k = dof as f64;
    let z = 3.090_232_306_167_813;
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

#[test]
fn the_critical_values_match_the_tables() {
    // χ²_{0.999}: 4 → 18.467, 10 → 29.588, 100 → 149.449 (the approximation errs high at
    // few degrees of freedom, so the test is then slightly lenient).
    for (dof, table) in [(4, 18.467), (10, 29.588), (100, 149.449)] {
        let c = chi2_critical(dof);
        assert!((c - table).abs() / table < 0.02, "dof {dof}: {c} vs {table}");
    }
}

/// Pearson's χ² of `counts` (value → count) against the exact mass over [−4σ, 4σ],
/// merging bins until each expects at least 5; returns (χ², degrees of freedom).
fn chi2(counts: &std::collections::BTreeMap<i64, usize>, sigma2: f64, n: usize) -> (f64, usize) {
    let p = pmf(sigma2);
    let edge = (4.0 * sigma2.sqrt()).floor() as i64;
    let mut bins: Vec<(f64, f64)> = Vec::new(); // (expected, observed)
    let (mut e, mut o) = (0.0, 0.0);
    for x in -edge..=edge {
        e += p(x) * n as f64;
        o += *counts.get(&x).unwrap_or(&0) as f64;
        if e >= 5.0 {
            bins.push((e, o));
            (e, o) = (0.0, 0.0);
        }
    }
    if let Some(last) = bins.last_mut() {
        last.0 += e;
        last.1 += o;
    }
    let stat = bins.iter().map(|(e, o)| (o - e) * (o - e) / e).sum();
    (stat, bins.len() - 1)
}

#[test]
fn discrete_gaussian_matches_its_mass_function_mean_variance_and_tails() {
    for (seed, (num, den)) in [(1u64, (1u64, 4u64)), (2, (1, 1)), (3, (9, 1)), (4, (100, 1)), (5, (10_000, 1))] {
        let v = Variance::new(num, den).unwrap();
        let sigma2 = v.as_f64();
        let sigma = sigma2.sqrt();
        let g = DiscreteGaussian::new(v);
        let xs = g.samples(N, &mut seeded(seed)).unwrap();

        // Exact mean 0 and variance Σ x² p(x) (below σ² for small σ).
        let p = pmf(sigma2);
        let reach = (40.0 * sigma) as i64 + 20;
        let var: f64 = (-reach..=reach).map(|x| (x * x) as f64 * p(x)).sum();
        let m4: f64 = (-reach..=reach).map(|x| ((x * x) as f64).powi(2) * p(x)).sum();
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / N as f64;
        let s2 = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (N - 1) as f64;
        let se_mean = (var / N as f64).sqrt();
        let se_var = ((m4 - var * var) / N as f64).sqrt();
        assert!(mean.abs() < 4.0 * se_mean, "σ = {sigma}: mean {mean} (SE {se_mean})");
        assert!((s2 - var).abs() < 4.0 * se_var, "σ = {sigma}: variance {s2}, exact {var} (SE {se_var})");

        // Every value in [−4σ, 4σ] against the exact mass.
        let mut counts = std::collections::BTreeMap::new();
        for &x in &xs {
            *counts.entry(x).or_insert(0usize) += 1;
        }
        let (stat, dof) = chi2(&counts, sigma2, N);
        let critical = chi2_critical(dof);
        assert!(stat < critical, "σ = {sigma}: χ² = {stat:.1} ≥ {critical:.1} ({dof} dof)");

        // Beyond 4σ: the exact tail probability, within 4 binomial standard errors
        // (and at most a handful when it expects almost none).
        let edge = (4.0 * sigma).floor() as i64;
        let p_tail = 1.0 - (-edge..=edge).map(&p).sum::<f64>();
        let tail = xs.iter().filter(|x| x.abs() > edge).count() as f64;
        let expected = p_tail * N as f64;
        let sd = (expected * (1.0 - p_tail)).sqrt().max(1.0);
        assert!((tail - expected).abs() < 4.0 * sd, "σ = {sigma}: {tail} beyond 4σ, expected {expected:.1}");
    }
}

/// The test fails on a sampler that is off: a discrete Gaussian of 1.2σ² (or a rounded
/// continuous one, at σ = 0.5) does not pass the χ² test for σ².
#[test]
fn the_chi_square_test_can_fail() {
    let xs = DiscreteGaussian::new(Variance::new(12, 1).unwrap()).samples(N, &mut seeded(7)).unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for &x in &xs {
        *counts.entry(x).or_insert(0usize) += 1;
    }
    let (stat, dof) = chi2(&counts, 10.0, N);
    assert!(stat > chi2_critical(dof), "σ² = 12 passed as σ² = 10: χ² = {stat:.1}");
}

/// Bernoulli(exp(−γ)) (CKS20 Algorithm 1) hits exp(−γ) for γ ∈ {0, ½, 1, 5/2, 7}.
#[test]
fn bernoulli_exp_neg_has_the_exact_probability() {
    let mut e = seeded(11);
    for (num, den) in [(0u32, 1u32), (1, 2), (1, 1), (5, 2), (7, 1)] {
        let (n, d) = (BigUint::from(num), BigUint::from(den));
        let hits = (0..N).filter(|_| bernoulli_exp_neg(&n, &d, &mut e).unwrap()).count() as f64;
        let p = (-(num as f64) / den as f64).exp();
        let sd = (N as f64 * p * (1.0 - p)).sqrt().max(1.0);
        assert!((hits - p * N as f64).abs() < 4.0 * sd, "γ = {num}/{den}: {hits} of {N}, p = {p}");
    }
}
