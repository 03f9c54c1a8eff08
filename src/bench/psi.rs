//! `fedcrm bench psi`: the cardinality of two sets of n identifiers (half shared) end
//! to end over loopback TLS (issue 12), beside an honest floor measured in the same run
//! and, with `--openmined`, OpenMined PSI timed in the same run. Measured, never
//! asserted.
//!
//! **What is timed** (`total_ms`, the headline) — a loopback deployment
//! ([`crate::harness::Cluster`]: the coordinator in this process, two franchisee nodes
//! as tasks, real gRPC over mutual TLS on 127.0.0.1), each node holding n CDNOW
//! customers whose customer id is the identifier (`[psi] match_on = "customer_key"`);
//! one [`crate::hq::AnalystClient::overlap`] call with DP off, from the request to the
//! released reply, whose pair count must be exactly n/2. In it: the coordinator's
//! signed start, both nodes' checks, signed run keys relayed and verified, each node
//! reading its identifiers, hashing to ristretto255 and blinding on all cores, the
//! comparer's list mixed with trap points (one per identifier up to the default
//! `max_traps`, 32,768, then up to its bucket) and the responder's padded to its
//! bucket, shuffled and sealed (ChaCha20-Poly1305 chunks) and relayed by the
//! coordinator; the responder's answer; the comparer's check of
//! every trap and its count; both releases and the coordinator's minimum cohort. Both
//! nodes share this machine's cores. Not in it: writing the data, starting the
//! deployment and loading the nodes (`cluster_start_ms`, reported apart); noise.
//!
//! **In process** (`in_process_ms`, kept beside it) — the same pair's computation
//! with the pieces a node runs (`fedcrm_node::psi`), both sides in this process, step
//! by step: no network, relay, run-key signatures or node checks.
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
use fedcrm_crypto::psi::{self, BlindingKey, Domain};
use fedcrm_crypto::{RoundId, SystemRandom};
use fedcrm_node::psi::{DEFAULT_MAX_TRAPS, ListLimits, pair_in_process};
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
    /// The four steps above, both sides in this process (no network, no relay).
    pub in_process_ms: f64,
    /// `in_process_ms / floor_ms`.
    pub in_process_ratio: f64,
    /// End to end over loopback TLS: the analyst's request to the released reply.
    pub total_ms: f64,
    pub floor_ms: f64,
    /// `total_ms / floor_ms`: the end-to-end time over its floor.
    pub ratio: f64,
    pub end_to_end: EndToEnd,
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
    let limits = ListLimits { min_points: psi::MIN_BUCKET, max_points: psi::MAX_LIST, max_traps: DEFAULT_MAX_TRAPS };
    let (comparer, responder) = pair_in_process(RoundId::random(&rng)?, ("fr-bench", "hq-bench"), limits, &rng)?;

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
        in_process_ms: ms(total),
        in_process_ratio: 0.0,
        total_ms: 0.0,
        floor_ms: 0.0,
        ratio: 0.0,
        end_to_end: EndToEnd { cluster_start_ms: 0.0, run_ms: 0.0, comparer: String::new(), released_shared: 0 },
        comparer_points: points(cb, from_c.len()),
        responder_points: points(rb, from_r.len()),
        bytes: Bytes { comparer_list: cb, responder_list: rb, answer: ab },
        openmined: None,
    })
}

/// The end-to-end run's figures (ms): a loopback deployment of two franchisees.
#[derive(Debug, Clone, Serialize)]
pub struct EndToEnd {
    /// Writing both nodes' data, issuing certificates, starting the coordinator and the
    /// two nodes (each loading its n customers) until both are connected. Not timed in
    /// `total_ms`.
    pub cluster_start_ms: f64,
    /// From the analyst's overlap request to the released reply (`total_ms`).
    pub run_ms: f64,
    /// The node that compared (the lower name, both being franchisees).
    pub comparer: String,
    /// The released pair count (exact: `dp_off`).
    pub released_shared: u64,
}

/// The two franchisees' data: CDNOW rows whose customer id is the identifier (the
/// harness matches CDNOW on `customer_key`), identifier `+86139NNNNNNNN` as id
/// `NNNNNNNN`, so the shared ones are equal on both nodes.
fn cdnow_text(ids: &[String]) -> String {
    let mut s = String::with_capacity(ids.len() * 28);
    for id in ids {
        let key = id.trim_start_matches("+86139");
        s.push_str(key);
        s.push_str(" 19970101 1 11.77\n");
    }
    s
}

/// One overlap run over a loopback deployment (in-process coordinator, two nodes as
/// tasks, gRPC over mutual TLS), timed from the request to the released reply.
async fn end_to_end(n: usize, a: &[String], b: &[String]) -> Result<EndToEnd> {
    use crate::harness::{Cluster, ClusterOptions, NodeSpec};
    let started = Instant::now();
    let nodes =
        vec![NodeSpec::franchisee("fr-bench-a", cdnow_text(a)), NodeSpec::franchisee("fr-bench-b", cdnow_text(b))];
    let opts = ClusterOptions {
        nodes,
        // A run at n = 1,000,000 must never meet the phase timeout.
        phase_timeout_seconds: 3600,
        max_customers_per_node: ClusterOptions::default().max_customers_per_node.max(n as u64),
        ..Default::default()
    };
    let cluster = Cluster::start(opts).await.context("starting the loopback deployment for the bench")?;
    let cluster_start = started.elapsed();
    let outcome = async {
        let mut client = crate::hq::AnalystClient::connect(&cluster.analyst).await?;
        let request = fedcrm_protocol::pb::OverlapRequest {
            purpose: "fedcrm bench psi: one pair end to end".into(),
            dp_off: true,
            ..Default::default()
        };
        let t = Instant::now();
        let released = client.overlap(request, |_| {}).await?;
        Ok::<_, anyhow::Error>((t.elapsed(), released))
    }
    .await;
    cluster.stop().await;
    let (run, released) = outcome?;
    let [pair] = released.pairs.as_slice() else {
        bail!("the overlap run released {} pairs, expected one: {:?}", released.pairs.len(), released.exits);
    };
    let want = (n - n / 2) as u64;
    ensure!(
        !pair.withheld && pair.shared == want as i64,
        "the run released {} shared (withheld: {}), expected exactly {want} (dp off); exits: {:?}",
        pair.shared,
        pair.withheld,
        released.exits
    );
    Ok(EndToEnd {
        cluster_start_ms: ms(cluster_start),
        run_ms: ms(run),
        comparer: pair.comparer.clone(),
        released_shared: want,
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

/// Run the bench: `n` identifiers per side; OpenMined with `(python, script)`. The
/// loopback deployment runs on the caller's tokio runtime; the in-process pair and the
/// floor on a blocking thread of it (after the deployment has stopped).
pub async fn run(n: usize, peer: Option<(PathBuf, PathBuf)>) -> Result<PsiReport> {
    ensure!(n >= 20, "n must be at least 20 (the n/2 shared must reach the minimum cohort of 10 to be released)");
    let (a, b) = lists(n);
    let e2e = end_to_end(n, &a, &b).await?;
    let mut report = tokio::task::spawn_blocking(move || -> Result<PsiReport> {
        let mut report = measured(n, &a, &b)?;
        let (floor, count) = floor(&a, &b)?;
        ensure!(count == report.shared, "the floor counted {count}, the pair {}", report.shared);
        report.floor_ms = ms(floor);
        Ok(report)
    })
    .await
    .context("the in-process pair's thread")??;
    ensure!(
        e2e.released_shared == report.shared,
        "end to end released {}, in process {}",
        e2e.released_shared,
        report.shared
    );
    report.in_process_ratio = report.in_process_ms / report.floor_ms;
    report.total_ms = e2e.run_ms;
    report.ratio = report.total_ms / report.floor_ms;
    report.end_to_end = e2e;
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
    let e = &r.end_to_end;
    let rows = [
        (
            format!("end to end over loopback TLS, request to released reply ({} compared)", e.comparer),
            format!("{:.1} ms", r.total_ms),
        ),
        ("floor: plain DH-PSI cardinality, same group, all cores".to_string(), format!("{:.1} ms", r.floor_ms)),
        ("ratio: end to end over the floor".to_string(), format!("{:.2}×", r.ratio)),
        (
            "(not timed) cluster start: data written, 2 nodes loaded, connected".to_string(),
            format!("{:.1} ms", e.cluster_start_ms),
        ),
        ("in process, both sides in this process, no network:".to_string(), String::new()),
        (
            format!("  comparer's list (blind, {} points with traps, shuffle, seal)", r.comparer_points),
            format!("{:.1} ms", r.comparer_list_ms),
        ),
        (
            format!("  responder's list (blind, {} points padded, shuffle, seal)", r.responder_points),
            format!("{:.1} ms", r.responder_list_ms),
        ),
        ("  responder's answer (open, blind again, shuffle, seal)".to_string(), format!("{:.1} ms", r.answer_ms)),
        (
            "  comparer's count (open both, blind again, check traps, count)".to_string(),
            format!("{:.1} ms", r.compare_ms),
        ),
        ("  in process total".to_string(), format!("{:.1} ms", r.in_process_ms)),
        ("  in process over the floor".to_string(), format!("{:.2}×", r.in_process_ratio)),
    ];
    let width = rows.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0);
    for (label, value) in rows {
        match value.is_empty() {
            true => s.push_str(&format!("  {label}\n")),
            false => s.push_str(&format!("  {label:<width$} {value:>12}\n")),
        }
    }
    s.push_str(&format!(
        "  sealed bytes: comparer's list {}, responder's list {}, answer {}\n",
        r.bytes.comparer_list, r.bytes.responder_list, r.bytes.answer
    ));
    match &r.openmined {
        Some(o) => s.push_str(&format!(
            "  OpenMined PSI (P-256 + GCS, one thread, cardinality, in process), same n: {:.1} ms (setup {:.1}, request {:.1}, process {:.1}, finish {:.1}) — ours end to end {:.1}× faster on {} threads\n",
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
    s.push_str("  floor: no traps, padding, shuffles, sealing, network or relay; end to end has them all, run-key signatures too; no noise (dp off)\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_pair_counts_right_end_to_end_and_in_process_beside_its_floor() {
        let r = run(2000, None).await.unwrap();
        assert_eq!((r.shared, r.end_to_end.released_shared), (1000, 1000));
        assert_eq!(r.end_to_end.comparer, "fr-bench-a", "the lower name compares");
        assert!(r.comparer_points >= 4000 && r.responder_points >= 2000, "{r:?}");
        assert!(r.floor_ms > 0.0 && r.total_ms > 0.0 && r.in_process_ms > 0.0, "{r:?}");
        assert!((r.ratio - r.total_ms / r.floor_ms).abs() <= 1e-9 * r.ratio, "{r:?}");
        assert!((r.in_process_ratio - r.in_process_ms / r.floor_ms).abs() <= 1e-9 * r.in_process_ratio, "{r:?}");
        let t = table(&r);
        assert!(t.contains("end to end over loopback TLS") && t.contains("ratio"), "{t}");
        assert!(run(19, None).await.is_err());
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
