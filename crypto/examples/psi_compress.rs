//! Why `psi` compresses a chunk of points with `double_and_compress_batch` (issue 12):
//! the time per point of the three ways to turn k·P into its 32-byte encoding, and of
//! decoding, on one thread, in wall-clock time on this machine. Not a benchmark with
//! statistics, and never an assertion; the figures are in `psi`'s module doc.
//!
//! `cargo run -p fedcrm-crypto --example psi_compress --release [n]`

use std::time::Instant;

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use fedcrm_crypto::SystemRandom;
use fedcrm_crypto::psi::{BlindingKey, Domain, hash_to_group};
use ring::rand::SecureRandom;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rng = SystemRandom::new();
    let domain = Domain { version: 1, run_id: [7; 16] };
    let ids: Vec<String> = (0..n).map(|i| format!("+86138{i:08}")).collect();

    let t = Instant::now();
    let points: Vec<RistrettoPoint> = ids.iter().map(|id| hash_to_group(&domain, id.as_bytes())).collect();
    report("hash to group", n, t);

    let mut wide = [0u8; 64];
    rng.fill(&mut wide).unwrap();
    let k = Scalar::from_bytes_mod_order_wide(&wide);
    let half = k * Scalar::from(2u8).invert();

    let t = Instant::now();
    let multiplied: Vec<RistrettoPoint> = points.iter().map(|p| p * k).collect();
    report("scalar multiplication", n, t);

    let t = Instant::now();
    let one_by_one: Vec<CompressedRistretto> = multiplied.iter().map(|p| p.compress()).collect();
    report("compress, one by one", n, t);

    let halved: Vec<RistrettoPoint> = points.iter().map(|p| p * half).collect();
    for chunk in [16, 64, 256, 1024, 4096] {
        let t = Instant::now();
        let batched: Vec<CompressedRistretto> =
            halved.chunks(chunk).flat_map(RistrettoPoint::double_and_compress_batch).collect();
        report(&format!("double and compress, chunks of {chunk}"), n, t);
        assert_eq!(batched, one_by_one);
    }

    let t = Instant::now();
    let decoded: Vec<RistrettoPoint> = one_by_one.iter().map(|c| c.decompress().unwrap()).collect();
    report("decompress", n, t);
    assert_eq!(decoded, multiplied);

    // The whole of `blind` and `reblind`, on all cores.
    let key = BlindingKey::generate(domain, &rng).unwrap();
    let t = Instant::now();
    let blinded = fedcrm_crypto::psi::blind(&key, &ids);
    report("psi::blind (all cores)", n, t);
    let t = Instant::now();
    let _ = fedcrm_crypto::psi::reblind(&key, &blinded).unwrap();
    report("psi::reblind (all cores)", n, t);
}

fn report(what: &str, n: usize, start: Instant) {
    let s = start.elapsed().as_secs_f64();
    println!("{what:<40} {:>8.2} µs/point  ({:.3} s for {n})", s * 1e6 / n as f64, s);
}
