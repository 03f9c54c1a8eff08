//! The distributed discrete Gaussian for real vectors (issue 11, `fedcrm_dp::vector`),
//! with fixed seeds so every run draws the same numbers: the rotation is orthonormal;
//! conditional rounding never exceeds Theorem 1's Δ₂; unconditional rounding exceeds it
//! no more often than β (Kairouz, Liu & Steinke 2021, Prop. 22); without noise the
//! decoded sum is the clipped sum within the stated rounding bound; with noise each
//! coordinate's variance is n·σ²·γ²; the charge of T rounds is T single charges; the
//! calibration meets its target; bad input is refused with a clear message.

use fedcrm_dp::accounting::{Charge, tau};
use fedcrm_dp::sampler::Variance;
use fedcrm_dp::vector::{
    DEFAULT_BETA, DEFAULT_INFLATION, Neighbours, Params, Rotation, RotationSeed, Target, VectorError, clip_l2, decode,
    encode, norm_sq, quantize, round_conditionally,
};
use fedcrm_dp::{DpError, Entropy};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// A seeded ChaCha20 stream: reproducible draws.
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

/// Uniform in [−1, 1).
fn uniform(e: &mut Seeded) -> f64 {
    (e.0.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

fn random_vector(e: &mut Seeded, d: usize, scale: f64) -> Vec<f64> {
    (0..d).map(|_| scale * uniform(e)).collect()
}

fn seed(byte: u8) -> RotationSeed {
    RotationSeed([byte; 32])
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn the_rotation_is_orthonormal_and_its_inverse_undoes_it() {
    let mut e = seeded(1);
    let mut worst = (0.0f64, 0.0f64);
    for padded in [1usize, 2, 4, 64, 1024, 1 << 14] {
        let r = Rotation::new(&seed(7), padded).unwrap();
        let x = random_vector(&mut e, padded, 3.0);
        let mut y = x.clone();
        r.apply(&mut y);
        let norm_err = (norm(&y) - norm(&x)).abs() / norm(&x);
        assert!(norm_err < 1e-12, "d' = {padded}: norm changed by {norm_err:e} (relative)");
        r.invert(&mut y);
        let back = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(back < 1e-12, "d' = {padded}: round trip off by {back:e}");
        worst = (worst.0.max(norm_err), worst.1.max(back));
    }
    // U's columns are orthonormal: U·e_i · U·e_j = δ_ij.
    let padded = 32;
    let r = Rotation::new(&seed(9), padded).unwrap();
    let cols: Vec<Vec<f64>> = (0..padded)
        .map(|i| {
            let mut v = vec![0.0; padded];
            v[i] = 1.0;
            r.apply(&mut v);
            v
        })
        .collect();
    for i in 0..padded {
        for j in 0..padded {
            let dot: f64 = cols[i].iter().zip(&cols[j]).map(|(a, b)| a * b).sum();
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((dot - want).abs() < 1e-14, "columns {i}, {j}: {dot}");
        }
    }
    println!("rotation: largest relative norm change {:e}, largest round-trip error {:e}", worst.0, worst.1);
}

#[test]
fn the_signs_come_from_the_seed_and_are_balanced() {
    let padded = 1 << 16;
    let a = Rotation::new(&seed(1), padded).unwrap();
    assert_eq!(a, Rotation::new(&seed(1), padded).unwrap(), "the same seed gives the same rotation");
    assert_ne!(a, Rotation::new(&seed(2), padded).unwrap(), "another seed, another rotation");
    // D's diagonal: H/√d' maps the all-ones vector to √d'·e_0, and the inverse rotation
    // D·(H/√d') maps that back to D·1.
    let mut w = vec![1.0; padded];
    fedcrm_dp::vector::normalised_hadamard(&mut w);
    assert!((w[0] - (padded as f64).sqrt()).abs() < 1e-9 && w[1..].iter().all(|x| x.abs() < 1e-9));
    a.invert(&mut w);
    let negative = w.iter().filter(|x| **x < 0.0).count();
    assert!(w.iter().all(|x| (x.abs() - 1.0).abs() < 1e-9), "D has ±1 entries");
    let frac = negative as f64 / padded as f64;
    let se = (0.25 / padded as f64).sqrt();
    assert!((frac - 0.5).abs() < 4.0 * se, "{negative} of {padded} signs negative");
}

/// Parameters for the rounding property tests: d, s = c/γ and β over wide ranges.
fn arb_case() -> impl Strategy<Value = (usize, f64, f64, f64, u64)> {
    (
        1usize..600,
        0.01f64..50.0,
        prop_oneof![Just(1.0f64), Just(0.1), Just(0.01), Just(0.5), Just(2.0)],
        prop_oneof![Just(0.0f64), Just(DEFAULT_BETA), Just(0.9), Just(1e-10), Just(0.1)],
        any::<u64>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Whatever the input (longer than c or not), the rounded vector's squared norm is
    /// at most ⌊Δ₂²⌋, and so at most the Δ₂² the charge uses.
    #[test]
    fn conditional_rounding_stays_within_the_bound((d, clip, gamma, beta, s) in arb_case(), scale in 0.001f64..100.0) {
        let params = Params::noiseless_for_testing(d, clip, gamma, beta, 1).unwrap();
        let mut e = seeded(s);
        let x = random_vector(&mut e, d, scale);
        let r = Rotation::new(&seed(s as u8), params.padded_dimension()).unwrap();
        let rounded = quantize(&params, &r, &x, &mut e).unwrap();
        prop_assert_eq!(rounded.len(), params.padded_dimension());
        let got = norm_sq(&rounded);
        prop_assert!(got as f64 <= params.norm_bound_sq(), "‖x̃‖² = {} > Δ₂² = {}", got, params.norm_bound_sq());
        let l2 = params.sensitivity(Neighbours::Contribution).l2;
        prop_assert!((got as f64).sqrt() <= l2);
    }
}

/// Many random and adversarial inputs (all mass in one coordinate, exactly at norm c,
/// every coordinate at a half): Δ₂² ≥ ‖x̃‖₂², with conditioning (β = e^{−1/2}) and
/// without (β = 0, where the bound (s + √d')² must hold for any rounding).
#[test]
fn the_sensitivity_bounds_every_clipped_and_rounded_vector() {
    let mut e = seeded(3);
    let mut closest = 0.0f64;
    let mut tries = 0usize;
    for (d, clip, gamma) in [(256usize, 1.0f64, 0.125f64), (1000, 1.0, 0.01), (3, 5.0, 1.0), (4096, 2.0, 0.5)] {
        for beta in [DEFAULT_BETA, 0.0] {
            let params = Params::noiseless_for_testing(d, clip, gamma, beta, 1).unwrap();
            let r = Rotation::new(&seed(d as u8), params.padded_dimension()).unwrap();
            let mut inputs = vec![vec![0.0; d], vec![clip / (d as f64).sqrt(); d]];
            let mut spike = vec![0.0; d];
            spike[0] = 1e6;
            inputs.push(spike);
            inputs.push(vec![gamma / 2.0; d]);
            for _ in 0..50 {
                inputs.push(random_vector(&mut e, d, 10.0 * clip));
            }
            for x in &inputs {
                let rounded = quantize(&params, &r, x, &mut e).unwrap();
                let got = norm_sq(&rounded) as f64;
                assert!(got <= params.norm_bound_sq(), "d = {d}, β = {beta}: {got} > {}", params.norm_bound_sq());
                closest = closest.max(got / params.norm_bound_sq());
                tries += 1;
            }
        }
    }
    println!("{tries} rounded vectors: the largest ‖x̃‖²/Δ₂² was {closest:.4}");
}

/// KLS21 Prop. 22: one unconditional rounding of a vector of norm ≤ s exceeds the first
/// term of Δ₂² with probability at most β. The hardest case for it: every coordinate at
/// ±1/2 (rounding variance 1/4 each, the most), d' = 256, so s² = 64 and
/// Δ₂² = 64 + 64 + (8 + 8) = 144 at β = e^{−1/2}; E‖x̃‖² = 128 with standard deviation 8,
/// so a few per cent of roundings exceed it. 4,000 roundings, counted against β with 4
/// standard errors; the conditional rounding used by `encode` retries those.
#[test]
fn unconditional_rounding_exceeds_the_bound_at_most_beta_of_the_time() {
    let params = Params::noiseless_for_testing(256, 8.0, 1.0, DEFAULT_BETA, 1).unwrap();
    assert!((params.norm_bound_sq() - 144.0).abs() < 1e-9);
    let bound = params.norm_bound_sq().floor() as u128;
    let mut e = seeded(4);
    let y: Vec<f64> = (0..256).map(|_| if e.0.next_u32() & 1 == 0 { 0.5 } else { -0.5 }).collect();
    assert!((norm(&y) - params.scaled_clip()).abs() < 1e-12);
    let n = 4_000;
    let mut over = 0;
    for _ in 0..n {
        let rounded = round_conditionally(&y, u128::MAX, &mut e).unwrap();
        over += usize::from(norm_sq(&rounded) > bound);
    }
    let frac = over as f64 / n as f64;
    let se = (DEFAULT_BETA * (1.0 - DEFAULT_BETA) / n as f64).sqrt();
    println!("unconditional rounding over ⌊Δ₂²⌋ = {bound}: {over} of {n} ({frac:.4}; β = {DEFAULT_BETA:.4})");
    assert!(over > 0, "the case should be hard enough to exceed the bound sometimes");
    assert!(frac <= DEFAULT_BETA + 4.0 * se);
    // And conditioned, never.
    for _ in 0..200 {
        assert!(norm_sq(&round_conditionally(&y, bound, &mut e).unwrap()) <= bound);
    }
}

/// The n nodes' words summed as secure aggregation sums them: wrapping, mod 2^64.
fn wrapping_sum(words: &[Vec<u64>]) -> Vec<u64> {
    let mut sum = vec![0u64; words[0].len()];
    for w in words {
        for (s, x) in sum.iter_mut().zip(w) {
            *s = s.wrapping_add(*x);
        }
    }
    sum
}

fn clipped_sum(inputs: &[Vec<f64>], clip: f64) -> Vec<f64> {
    let mut sum = vec![0.0; inputs[0].len()];
    for x in inputs {
        for (s, v) in sum.iter_mut().zip(clip_l2(x, clip)) {
            *s += v;
        }
    }
    sum
}

/// Without noise, ‖decode(Σ encode(xᵢ)) − Σ clip(xᵢ)‖₂ < γ·n·√d': each node's rounding
/// error is below 1 per grid coordinate (so below √d' in ℓ2 on the grid, γ·√d' in real
/// units), the rotation keeps norms, and the errors of n nodes add at most linearly.
/// Typically it is about γ·√(n·d'/6) (independent errors of variance p(1 − p), 1/6 on
/// average over uniform fractions).
#[test]
fn without_noise_the_decoded_sum_is_the_clipped_sum_within_the_rounding_bound() {
    let mut e = seeded(5);
    for (d, n, clip, gamma) in [(100usize, 7usize, 1.0f64, 1e-3f64), (1000, 3, 10.0, 0.05), (5, 12, 0.5, 0.25)] {
        let params = Params::noiseless_for_testing(d, clip, gamma, DEFAULT_BETA, n).unwrap();
        let padded = params.padded_dimension() as f64;
        // Some inputs longer than c (clipped), some shorter, some with negative sums.
        let inputs: Vec<Vec<f64>> =
            (0..n).map(|i| random_vector(&mut e, d, clip * if i % 2 == 0 { 0.3 } else { 3.0 })).collect();
        let words: Vec<Vec<u64>> = inputs.iter().map(|x| encode(&params, &seed(11), x, &mut e).unwrap()).collect();
        let decoded = decode(&params, &seed(11), &wrapping_sum(&words)).unwrap();
        let want = clipped_sum(&inputs, clip);
        let err = norm(&decoded.iter().zip(&want).map(|(a, b)| a - b).collect::<Vec<_>>());
        let bound = gamma * n as f64 * padded.sqrt();
        let typical = gamma * (n as f64 * padded / 6.0).sqrt();
        println!(
            "d = {d}, n = {n}, γ = {gamma}: ‖error‖₂ = {err:.3e}, bound γ·n·√d' = {bound:.3e}, typical {typical:.3e}"
        );
        assert!(err < bound, "{err} ≥ {bound}");
        assert!(err < 3.0 * typical, "{err} far above the typical {typical}");
    }
}

/// Sample mean and variance of the decoded noise over `rounds` rounds (fresh seeds),
/// against Σ clip(xᵢ).
fn noise_moments(params: &Params, inputs: &[Vec<f64>], rounds: u8, e: &mut Seeded) -> (f64, f64, usize) {
    let want = clipped_sum(inputs, params.clip());
    let mut devs = Vec::new();
    for round in 0..rounds {
        let words: Vec<Vec<u64>> = inputs.iter().map(|x| encode(params, &seed(round), x, e).unwrap()).collect();
        let decoded = decode(params, &seed(round), &wrapping_sum(&words)).unwrap();
        devs.extend(decoded.iter().zip(&want).map(|(a, b)| a - b));
    }
    let m = devs.len() as f64;
    let mean = devs.iter().sum::<f64>() / m;
    let var = devs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (m - 1.0);
    (mean, var, devs.len())
}

/// With noise, each coordinate of the decoded sum has variance n·σ²·γ² around
/// Σ clip(xᵢ): the rotation keeps the sum of n independent N_ℤ(0, σ²) isotropic. Zero
/// inputs round exactly, so there it is the noise alone; with random inputs the
/// rounding adds at most n·γ²/4. 4 standard errors (√(2/m)·variance for m values; the
/// rotated noise is close to normal), mean 0 within 4·√(variance/m).
#[test]
fn with_noise_each_coordinate_has_variance_n_sigma2_gamma2() {
    let (d, n, clip, gamma) = (1000usize, 5usize, 1.0f64, 0.01f64);
    let sigma2 = 16u64;
    let params = Params::new(d, clip, gamma, DEFAULT_BETA, Variance::integer(sigma2).unwrap(), n).unwrap();
    let want = n as f64 * sigma2 as f64 * gamma * gamma;
    let mut e = seeded(6);

    let zeros = vec![vec![0.0; d]; n];
    let (mean, var, m) = noise_moments(&params, &zeros, 4, &mut e);
    let se = want * (2.0 / m as f64).sqrt();
    println!("zero inputs: variance {var:.5e} vs n·σ²·γ² = {want:.5e} (SE {se:.1e}, {m} values), mean {mean:.1e}");
    assert!((var - want).abs() < 4.0 * se, "variance {var} vs {want}");
    assert!(mean.abs() < 4.0 * (want / m as f64).sqrt(), "mean {mean}");

    let inputs: Vec<Vec<f64>> = (0..n).map(|_| random_vector(&mut e, d, 0.2)).collect();
    let (mean, var, m) = noise_moments(&params, &inputs, 4, &mut e);
    let upper = n as f64 * (sigma2 as f64 + 0.25) * gamma * gamma;
    let se = upper * (2.0 / m as f64).sqrt();
    println!("random inputs: variance {var:.5e} in [{want:.5e}, {upper:.5e}] ± 4 SE, mean {mean:.1e}");
    assert!(var > want - 4.0 * se && var < upper + 4.0 * se, "variance {var} vs [{want}, {upper}]");
    assert!(mean.abs() < 4.0 * (upper / m as f64).sqrt(), "mean {mean}");
}

#[test]
fn the_charge_of_t_rounds_composes_t_single_charges() {
    let (d, n, sigma2) = (100_000usize, 10usize, 400.0f64);
    let params = Params::new(d, 1.0, 1e-3, DEFAULT_BETA, Variance::integer(sigma2 as u64).unwrap(), n).unwrap();
    let padded = params.padded_dimension();
    assert_eq!(padded, 131_072);
    for k in [1usize, 4, 10] {
        let one = params.charge(1, k, Neighbours::Contribution).unwrap();
        let delta2 = params.norm_bound_sq();
        assert!((one.rho - delta2 / (2.0 * k as f64 * sigma2)).abs() <= 1e-12 * one.rho);
        assert!((one.xi - tau(k, sigma2) * padded as f64).abs() <= 1e-12 * one.xi.max(f64::MIN_POSITIVE));
        for t in [1usize, 2, 10, 57] {
            let many = params.charge(t, k, Neighbours::Contribution).unwrap();
            let composed = (0..t).fold(Charge::default(), |acc, _| acc.compose(one));
            assert!((many.rho - composed.rho).abs() <= 1e-12 * composed.rho, "T = {t}: {many:?} vs {composed:?}");
            assert!((many.xi - composed.xi).abs() <= 1e-12 * composed.xi.max(f64::MIN_POSITIVE));
        }
        let replaced = params.charge(1, k, Neighbours::Replacement).unwrap();
        assert!((replaced.rho - 4.0 * one.rho).abs() <= 1e-12 * replaced.rho, "replacement doubles Δ₂");
    }
    assert!(params.charge(3, 1, Neighbours::Contribution).unwrap().xi.abs() < f64::MIN_POSITIVE, "k = 1: τ = 0");
    for (t, k) in [(0, 1), (1, 0), (1, 11)] {
        assert!(matches!(params.charge(t, k, Neighbours::Contribution), Err(VectorError::Parameter(_))), "{t}, {k}");
    }
    let noiseless = Params::noiseless_for_testing(d, 1.0, 1e-3, DEFAULT_BETA, n).unwrap();
    let err = noiseless.charge(1, 1, Neighbours::Contribution).unwrap_err();
    assert!(err.to_string().contains("no privacy"), "{err}");
}

/// The calibration meets ρ per round (never above it), keeps the grid's inflation within
/// its target, and fits 64-bit words.
#[test]
fn calibration_meets_its_target() {
    for (d, clip, n, honest, rho, neighbours) in [
        (16usize, 1.0f64, 5usize, 5usize, 0.05f64, Neighbours::Contribution),
        (100_000, 1.0, 10, 5, 0.01, Neighbours::Contribution),
        (100_000, 0.1, 10, 10, 0.001, Neighbours::Replacement),
        (1000, 50.0, 50, 20, 1.0, Neighbours::Contribution),
        (3, 1.0, 2, 1, 10.0, Neighbours::Replacement),
    ] {
        let target = Target { rho, honest, neighbours, inflation: DEFAULT_INFLATION };
        let p = Params::calibrate(d, clip, n, target).unwrap();
        let got = p.charge(1, honest, neighbours).unwrap();
        let s = p.scaled_clip();
        let inflation = p.norm_bound_sq() / (s * s) - 1.0;
        let sigma2 = p.variance().unwrap().as_f64();
        println!(
            "d = {d}, c = {clip}, n = {n}, k = {honest}, ρ = {rho} ({neighbours:?}): γ = {:.3e}, s = {s:.1}, \
             σ² = {}, inflation {inflation:.4}, ρ charged {:.5}, ξ {:.1e}, {} bits",
            p.gamma(),
            p.variance().unwrap(),
            got.rho,
            got.xi,
            p.required_bits()
        );
        assert!(got.rho <= rho * (1.0 + 1e-12), "ρ {} above the target {rho}", got.rho);
        assert!(got.rho > rho * 0.9, "σ² = {sigma2} wastes privacy: ρ {}", got.rho);
        assert!(inflation <= DEFAULT_INFLATION * (1.0 + 1e-9), "inflation {inflation}");
        assert!(p.required_bits() <= 64);
    }
    let bad = Target { rho: 0.0, honest: 1, neighbours: Neighbours::Contribution, inflation: 0.01 };
    assert!(Params::calibrate(10, 1.0, 3, bad).is_err());
    let bad = Target { rho: 0.1, honest: 4, neighbours: Neighbours::Contribution, inflation: 0.01 };
    assert!(Params::calibrate(10, 1.0, 3, bad).is_err());
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let params = Params::new(10, 1.0, 0.01, DEFAULT_BETA, Variance::integer(4).unwrap(), 3).unwrap();
    let mut e = seeded(8);

    let err = encode(&params, &seed(1), &[0.5; 9], &mut e).unwrap_err();
    assert_eq!(err, VectorError::Dimension { expected: 10, got: 9 });
    assert_eq!(err.to_string(), "vector of 9 values, expected 10 (the round's dimension)");

    let err = decode(&params, &seed(1), &[0u64; 10]).unwrap_err();
    assert_eq!(err.to_string(), "sum of 10 words, expected 16 (the round's padded dimension)");

    let mut x = vec![0.0; 10];
    x[3] = f64::NAN;
    let err = encode(&params, &seed(1), &x, &mut e).unwrap_err();
    assert!(matches!(err, VectorError::NonFinite { index: 3, .. }), "{err}");
    assert_eq!(err.to_string(), "value 3 of the vector is NaN, not a finite number");
    x[3] = f64::NEG_INFINITY;
    assert!(matches!(encode(&params, &seed(1), &x, &mut e), Err(VectorError::NonFinite { index: 3, .. })));

    // Huge but finite values are clipped without overflow in the norm.
    let mut big = vec![1e300; 10];
    big[0] = -1e300;
    assert!(encode(&params, &seed(1), &big, &mut e).is_ok());

    // A grid so fine that n·Δ₂ passes 2^63: refused before any round.
    let err = Params::new(4, 1.0, 1e-16, DEFAULT_BETA, Variance::integer(1).unwrap(), 1000).unwrap_err();
    assert!(matches!(err, VectorError::WordOverflow { nodes: 1000, .. }), "{err}");
    assert!(err.to_string().contains("more than 64-bit words hold"), "{err}");

    for (d, c, g, b, n) in [
        (0usize, 1.0f64, 1.0f64, 0.5f64, 1usize),
        (4, 0.0, 1.0, 0.5, 1),
        (4, f64::NAN, 1.0, 0.5, 1),
        (4, 1.0, 0.0, 0.5, 1),
        (4, 1.0, f64::INFINITY, 0.5, 1),
        (4, 1.0, 1.0, 0.95, 1),
        (4, 1.0, 1.0, -0.1, 1),
        (4, 1.0, 1.0, 0.5, 0),
    ] {
        let err = Params::new(d, c, g, b, Variance::integer(1).unwrap(), n).unwrap_err();
        assert!(matches!(err, VectorError::Parameter(_)), "{d} {c} {g} {b} {n}: {err}");
    }
}

/// A sum whose true value is negative (on the grid, after the sign flip, either way)
/// decodes back through two's complement.
#[test]
fn negative_sums_decode_through_twos_complement() {
    let params = Params::noiseless_for_testing(1, 10.0, 1.0, 0.0, 2).unwrap();
    let mut e = seeded(9);
    let words: Vec<Vec<u64>> =
        [vec![-4.0], vec![-3.0]].iter().map(|x| encode(&params, &seed(0), x, &mut e).unwrap()).collect();
    // The rotation of d' = 1 is one sign: the words are −4 and −3 or 4 and 3.
    let sum = wrapping_sum(&words)[0] as i64;
    assert_eq!(sum.abs(), 7, "{words:?}");
    let decoded = decode(&params, &seed(0), &wrapping_sum(&words)).unwrap();
    assert!((decoded[0] + 7.0).abs() < 1e-12, "{decoded:?}");
}
