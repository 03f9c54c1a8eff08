//! `fedcrm bench psi`: one private-set-intersection pair's computation (issue 12) on
//! this machine's cores, beside an honest floor and, with `--openmined`, OpenMined PSI
//! timed in the same run. Measured, never asserted.
//!
//! **What is timed** — both sides of one pair in this process, with the pieces a node
//! runs (`fedcrm_node::psi`): each side's list of n identifiers (half of them shared),
//! hashed to ristretto255 and blinded on all cores; the comparer's mixed with at least
//! one trap point per identifier and the responder's padded to its bucket, both shuffled
//! and sealed for the peer (ChaCha20-Poly1305 chunks); the responder opening the
//! comparer's list, blinding it again, shuffling and sealing it back; the comparer
//! opening both, blinding the responder's list again, checking every trap and counting.
//! **Not in it**: the network and the coordinator's relay (the PSI wire step of the
//! issue is not built yet), signing and checking the run keys (two ECDSA signatures per
//! pair), noise.
//!
//! **The floor**: the same pair done the fastest safe way for a semi-honest responder —
//! plain Diffie–Hellman PSI cardinality with the same group and the same batched
//! encodings on all cores: hash and blind both lists, blind each again, count — with no
//! traps, padding, shuffles or sealing. The ratio is what the defences against a
//! cheating responder and a reading relay cost (the traps alone double the comparer's
//! list).
//!
//! **OpenMined PSI** (`--openmined`): `../shared/bench/openmined_psi_bench.py`
//! (ECDH over P-256 and a Golomb-compressed set, one thread), cardinality mode, the
//! same n, half shared; its table row is parsed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fedcrm_crypto::keys::RoundSecret;
use fedcrm_crypto::psi::{self, BlindingKey, Domain};
use fedcrm_crypto::{RoundId, SystemRandom};
use fedcrm_node::psi::{Comparer, ListLimits, PairKeys, Responder};
use serde::Serialize;

/// The OpenMined release the script was written against.
pub const OPENMINED_PIN: &str = "openmined.psi==2.0.6";

/// `../shared/bench/openmined_psi_bench.py` beside the repository.
pub fn default_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/openmined_psi_bench.py")
}

/// Bytes sealed for the peer, per list.
#[derive(Debug, Clone, Serialize)]
pub struct Bytes {
    pub comparer_list: usize,
    pub responder_list: usize,
    pub answer: usize,
}

/// One run's figures (ms).
#[derive(Debug, Clone, Serialize)]
pub struct PsiReport {
    /// Identifiers per side.
    pub n: usize,
    pub shared: u64,
    pub threads: usize,
    pub comparer_list_ms: f64,
    pub responder_list_ms: f64,
    pub answer_ms: f64,
    pub compare_ms: f64,
    pub total_ms: f64,
    pub floor_ms: f64,
    pub ratio: f64,
    /// Points in the comparer's list (identifiers + traps) and the responder's.
    pub comparer_points: usize,
    pub responder_points: usize,
    pub bytes: Bytes,
    pub openmined: Option<OpenMined>,
}

/// OpenMined PSI's cardinality row for the same n (ms).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpenMined {
    pub server_setup_ms: f64,
    pub client_request_ms: f64,
    pub server_process_ms: f64,
    pub client_finish_ms: f64,
    pub total_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// n identifiers per side (E.164-like strings), the second half of each shared.
fn lists(n: usize) -> (Vec<String>, Vec<String>) {
    let a = (0..n).map(|i| format!("+86139{i:08}")).collect();
    let b = (n / 2..n + n / 2).map(|i| format!("+86139{i:08}")).collect();
    (a, b)
}

/// The pair, timed step by step.
fn measured(n: usize, a: &[String], b: &[String]) -> Result<PsiReport> {
    let rng = SystemRandom::new();
    let run = RoundId::random(&rng)?;
    let domain = Domain { version: psi::VERSION, run_id: run.0 };
    let (cs, rs) = (RoundSecret::generate(&rng)?, RoundSecret::generate(&rng)?);
    let (kc, kr) = (BlindingKey::generate(domain, &rng)?, BlindingKey::generate(domain, &rng)?);
    let commitment = kr.public();
    let limits = ListLimits { min_points: psi::MIN_BUCKET, max_points: psi::MAX_LIST };
    let (c_pub, r_pub) = (cs.public(), rs.public());
    let on_c = PairKeys { run, me: "fr-bench", peer: "hq-bench", secret: &cs, peer_key: &r_pub };
    let on_r = PairKeys { run, me: "hq-bench", peer: "fr-bench", secret: &rs, peer_key: &c_pub };
    let comparer = Comparer::new(&on_c, commitment, kc, limits)?;
    let responder = Responder::new(&on_r, kr, limits)?;

    let started = Instant::now();
    let (from_c, comparer) = comparer.own_list(a, &rng)?;
    let comparer_list = started.elapsed();
    let t = Instant::now();
    let (from_r, responder) = responder.own_list(b, &rng)?;
    let responder_list = t.elapsed();
    let t = Instant::now();
    let answer = responder.answer(&from_c, &rng)?;
    let answer_time = t.elapsed();
    let t = Instant::now();
    let shared = comparer.compare(&from_r, &answer)?;
    let compare = t.elapsed();
    let total = started.elapsed();
    ensure!(shared == (n - n / 2) as u64, "the pair counted {shared} shared, expected {}", n - n / 2);
    let size = |c: &[fedcrm_crypto::psi::channel::SealedChunk]| c.iter().map(|c| c.ciphertext.len() + 24).sum();
    let points = |bytes: usize, chunks: usize| (bytes - chunks * 40) / 32;
    let (cb, rb, ab) = (size(&from_c), size(&from_r), size(&answer));
    Ok(PsiReport {
        n,
        shared,
        threads: super::floor::threads(),
        comparer_list_ms: ms(comparer_list),
        responder_list_ms: ms(responder_list),
        answer_ms: ms(answer_time),
        compare_ms: ms(compare),
        total_ms: ms(total),
        floor_ms: 0.0,
        ratio: 0.0,
        comparer_points: points(cb, from_c.len()),
        responder_points: points(rb, from_r.len()),
        bytes: Bytes { comparer_list: cb, responder_list: rb, answer: ab },
        openmined: None,
    })
}

/// Plain DH-PSI cardinality on all cores: blind both, blind each again, count.
fn floor(a: &[String], b: &[String]) -> Result<(Duration, u64)> {
    let rng = SystemRandom::new();
    let domain = Domain { version: psi::VERSION, run_id: RoundId::random(&rng)?.0 };
    let (kc, kr) = (BlindingKey::generate(domain, &rng)?, BlindingKey::generate(domain, &rng)?);
    let started = Instant::now();
    let (ca, rb) = (psi::blind(&kc, a), psi::blind(&kr, b));
    let (cra, crb) = (psi::reblind(&kr, &ca)?, psi::reblind(&kc, &rb)?);
    let count = psi::intersection_count(&cra, &crb);
    Ok((started.elapsed(), count))
}

/// Parse OpenMined's table: the `cardinality` row for `n`.
pub fn parse_openmined(out: &str, n: usize) -> Result<OpenMined> {
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"cardinality") && f.get(1).and_then(|s| s.parse::<usize>().ok()) == Some(n) {
            let num = |i: usize| -> Result<f64> {
                let v: f64 = f.get(i).with_context(|| format!("openmined row too short: {line:?}"))?.parse()?;
                Ok(v * 1e3)
            };
            // cardinality N | setup request process finish total | us/elem | sizes
            return Ok(OpenMined {
                server_setup_ms: num(3)?,
                client_request_ms: num(4)?,
                server_process_ms: num(5)?,
                client_finish_ms: num(6)?,
                total_ms: num(7)?,
            });
        }
    }
    bail!("openmined_psi_bench.py printed no cardinality row for n = {n}:\n{out}")
}

fn openmined(python: &Path, script: &Path, n: usize) -> Result<OpenMined> {
    let out = Command::new(python)
        .arg(script)
        .args(["--sizes", &n.to_string(), "--reps", "1"])
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}); it needs `pip install {OPENMINED_PIN}` in its own venv: {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_openmined(&String::from_utf8_lossy(&out.stdout), n)
}

/// Run the bench: `n` identifiers per side; OpenMined with `(python, script)`.
pub fn run(n: usize, peer: Option<(PathBuf, PathBuf)>) -> Result<PsiReport> {
    ensure!(n >= 2, "n must be at least 2");
    let (a, b) = lists(n);
    let mut report = measured(n, &a, &b)?;
    let (floor, count) = floor(&a, &b)?;
    ensure!(count == report.shared, "the floor counted {count}, the pair {}", report.shared);
    report.floor_ms = ms(floor);
    report.ratio = report.total_ms / report.floor_ms;
    if let Some((python, script)) = peer {
        eprintln!(
            "OpenMined PSI: {} {} --sizes {n} (one thread; this takes a while)",
            python.display(),
            script.display()
        );
        report.openmined = Some(openmined(&python, &script, n)?);
    }
    Ok(report)
}

/// The report as a table.
pub fn table(r: &PsiReport) -> String {
    let mut s = format!(
        "fedcrm bench psi — one pair, n = {} identifiers per side ({} shared), {} threads; measured, never asserted\n",
        r.n, r.shared, r.threads
    );
    let rows = [
        (
            format!("comparer's list (blind, {} points with traps, shuffle, seal)", r.comparer_points),
            r.comparer_list_ms,
        ),
        (format!("responder's list (blind, {} points padded, shuffle, seal)", r.responder_points), r.responder_list_ms),
        ("responder's answer (open, blind again, shuffle, seal)".to_string(), r.answer_ms),
        ("comparer's count (open both, blind again, check traps, count)".to_string(), r.compare_ms),
        ("total".to_string(), r.total_ms),
    ];
    for (label, ms) in rows {
        s.push_str(&format!("  {label:<66} {ms:>10.1} ms\n"));
    }
    s.push_str(&format!(
        "  floor: plain DH-PSI cardinality, same group, all cores (no traps, padding, shuffles, sealing) {:.1} ms — ratio {:.2}×\n",
        r.floor_ms, r.ratio
    ));
    s.push_str(&format!(
        "  sealed bytes: comparer's list {}, responder's list {}, answer {}\n",
        r.bytes.comparer_list, r.bytes.responder_list, r.bytes.answer
    ));
    match &r.openmined {
        Some(o) => s.push_str(&format!(
            "  OpenMined PSI (P-256 + GCS, one thread, cardinality), same n: {:.1} ms (setup {:.1}, request {:.1}, process {:.1}, finish {:.1}) — ours {:.1}× faster on {} threads\n",
            o.total_ms,
            o.server_setup_ms,
            o.client_request_ms,
            o.server_process_ms,
            o.client_finish_ms,
            o.total_ms / r.total_ms,
            r.threads
        )),
        None => s.push_str("  OpenMined PSI: not run (--openmined --openmined-python PYTHON with openmined.psi==2.0.6)\n"),
    }
    s.push_str("  not in it: the network and the coordinator's relay (not built yet), run-key signatures, noise\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_pair_counts_right_beside_its_floor() {
        let r = run(600, None).unwrap();
        assert_eq!(r.shared, 300);
        assert!(r.comparer_points >= 1200 && r.responder_points >= 600, "{r:?}");
        assert!(table(&r).contains("ratio"));
    }

    #[test]
    fn openmineds_table_row_is_parsed() {
        let out = "openmined.psi 2.0.6; data structure GCS; fpr 1e-09\n\
                   mode                N | srv setup   cli req  srv proc   cli fin   total s |  us/elem | setup/req/resp MB\n\
                   cardinality    100000 |      3.10      3.20      3.30      0.40     10.00 |    100.0 | 0.3/3.3/3.3\n\
                   intersection   100000 |      3.10      3.20      3.30      0.50     10.10 |    101.0 | 0.3/3.3/3.3\n";
        let o = parse_openmined(out, 100_000).unwrap();
        assert!((o.total_ms - 10_000.0).abs() < 1e-6 && (o.server_process_ms - 3_300.0).abs() < 1e-6, "{o:?}");
        assert!(parse_openmined(out, 5).is_err());
    }
}
