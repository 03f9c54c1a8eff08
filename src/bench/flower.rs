//! `fedcrm bench secagg --flower`: Flower's SecAgg and SecAgg+ timed on the same
//! machine in the same run, by the peer-benchmark script `flower_secaggplus.py` (kept
//! beside the repository in `../shared/bench/`, never in it: a fresh clone has no
//! copy), and set beside our figures.
//!
//! The script has no machine-readable output, so its results table is parsed (see
//! [`parse`]; its unit test reads a captured run, `testdata/flower_sample.txt`). A line
//! that does not read as the table's row fails with the script's name and the line.
//! Nothing here needs Flower to build or test; only running it does
//! (`pip install flwr==1.41.0`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// The Flower release the script was written against (and the install hint names).
pub const FLWR_PIN: &str = "flwr==1.41.0";

/// The goals beside Flower (printed, never asserted): the coordinator at least
/// this many times faster than Flower SecAgg ...
pub const GOAL_VS_SECAGG: f64 = 100.0;
/// ... and faster than SecAgg+ on every row; node masking faster than both.
pub const GOAL_VS_SECAGG_PLUS: f64 = 1.0;

/// How to run Flower's script.
#[derive(Debug, Clone)]
pub struct Options {
    /// The script; by default `../shared/bench/flower_secaggplus.py` beside the repository.
    pub script: PathBuf,
    /// The Python interpreter that can `import flwr`.
    pub python: PathBuf,
    /// The script's server repetitions (`--reps`).
    pub reps: usize,
}

/// `../shared/bench/flower_secaggplus.py` relative to the workspace root (this package's
/// directory when it was built).
pub fn default_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/flower_secaggplus.py")
}

/// One row of the script's results table (times in ms, medians).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// `secagg` or `secagg+`.
    pub scheme: String,
    pub n: usize,
    /// Neighbours per client (n − 1 for SecAgg).
    pub k: usize,
    pub t: usize,
    pub d: usize,
    /// (a) one client: quantize + mask (`_collect_masked_vectors`).
    pub client_ms: f64,
    /// (b) server, no dropout: sum, unmask, total.
    pub server_sum_ms: f64,
    pub server_unmask_ms: f64,
    pub server_ms: f64,
    /// Clients dropped after sharing keys in case (c).
    pub dropped: usize,
    /// (c) server with `dropped` dropped: sum, unmask, total.
    pub dropped_sum_ms: f64,
    pub dropped_unmask_ms: f64,
    pub dropped_ms: f64,
    /// (d) one client: key generation, share keys, total.
    pub setup_ms: f64,
    pub share_ms: f64,
    pub setup_total_ms: f64,
}

/// What the script printed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parsed {
    /// Its first line: versions of flwr, numpy and python, and the CPU count.
    pub versions: String,
    pub rows: Vec<Row>,
}

/// One of our phases beside Flower's.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub phase: String,
    pub ours_ms: f64,
    pub secagg_ms: Option<f64>,
    /// Flower's time / ours.
    pub secagg_speedup: Option<f64>,
    pub secagg_plus_ms: Option<f64>,
    pub secagg_plus_speedup: Option<f64>,
    /// The speed-ups this row aims at.
    pub goal_vs_secagg: f64,
    pub goal_vs_secagg_plus: f64,
}

impl Comparison {
    /// Whether the row meets its goals (false where a figure is missing).
    pub fn goal_met(&self) -> bool {
        // "At least 100×" is inclusive; "faster than" (1×) is strict.
        let meets = |s: f64, goal: f64| if goal > 1.0 { s >= goal } else { s > goal };
        self.secagg_speedup.is_some_and(|s| meets(s, self.goal_vs_secagg))
            && self.secagg_plus_speedup.is_some_and(|s| meets(s, self.goal_vs_secagg_plus))
    }
}

/// Flower's figures in the bench's report (`flower` in `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub seconds: f64,
    pub versions: String,
    /// SecAgg+'s neighbours per client, as the script chose them.
    pub secagg_plus_k: Option<usize>,
    /// Clients the script dropped in its dropout case.
    pub dropped: Option<usize>,
    pub rows: Vec<Row>,
    pub comparison: Vec<Comparison>,
    pub notes: Vec<String>,
}

/// Fail early, before our own figures are measured, if the script is missing or the
/// interpreter cannot import flwr.
pub fn preflight(opts: &Options) -> Result<()> {
    if !opts.script.is_file() {
        bail!(
            "Flower's benchmark script {} does not exist: it lives beside the repository in ../shared/bench/ \
             (not part of a clone); pass --flower-script PATH",
            opts.script.display()
        );
    }
    check_flwr(&opts.python)
}

/// Run the script for n clients and d words; progress and timing on stderr.
pub fn run(opts: &Options, n: usize, d: usize) -> Result<(Parsed, String, Duration)> {
    preflight(opts)?;
    let script = &opts.script;
    let args = [
        script.display().to_string(),
        "--dims".into(),
        d.to_string(),
        "--clients".into(),
        n.to_string(),
        "--schemes".into(),
        "secagg".into(),
        "secagg+".into(),
        "--reps".into(),
        opts.reps.to_string(),
    ];
    let command = format!("{} {}", opts.python.display(), args.join(" "));
    eprintln!("Flower: running {command} (SecAgg and SecAgg+, n = {n}, d = {d}; this takes a minute or more)");
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("  Flower {spinner} [{elapsed}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(Duration::from_millis(200));
    let t0 = Instant::now();
    let mut child = Command::new(&opts.python)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {} (pass --python PATH)", opts.python.display()))?;
    // The script logs each step on stderr: show the latest, keep the tail for errors.
    // Unwrap safety: both pipes were requested just above.
    let stderr = child.stderr.take().unwrap();
    let pb = spinner.clone();
    let log = std::thread::spawn(move || {
        let mut tail: Vec<String> = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            pb.set_message(line.clone());
            tail.push(line);
            if tail.len() > 30 {
                tail.remove(0);
            }
        }
        tail
    });
    let mut stdout = String::new();
    // Unwrap safety: as above.
    child.stdout.take().unwrap().read_to_string(&mut stdout).context("reading Flower's output")?;
    let status = child.wait().context("waiting for Flower's script")?;
    let tail = log.join().unwrap_or_default();
    let took = t0.elapsed();
    spinner.finish_and_clear();
    if !status.success() {
        bail!("{command} failed ({status}) after {:.1} s; its last lines:\n{}", took.as_secs_f64(), tail.join("\n"));
    }
    eprintln!("Flower: done in {:.1} s", took.as_secs_f64());
    let name = script.display().to_string();
    Ok((parse(&stdout, &name)?, command, took))
}

/// Fail with the exact install command if `python` cannot import flwr.
fn check_flwr(python: &Path) -> Result<()> {
    let out =
        Command::new(python).args(["-c", "import flwr, numpy"]).stdin(Stdio::null()).output().with_context(|| {
            format!("cannot start the Python interpreter {} (pass --python PATH)", python.display())
        })?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.lines().last().unwrap_or("").trim();
        bail!(
            "{} cannot import flwr ({why}): run `pip install {FLWR_PIN}` (with that interpreter's pip), \
             or pass --python PATH to one that has it",
            python.display()
        );
    }
    Ok(())
}

/// Read the script's output: its first line (versions) and the rows of its results
/// table (the line starting `scheme` that names `(a) client`, a line of dashes, then
/// one row per line up to a blank line).
pub fn parse(out: &str, script: &str) -> Result<Parsed> {
    let versions = out.lines().next().unwrap_or("").trim().to_string();
    let mut lines = out.lines().skip_while(|l| !(l.trim_start().starts_with("scheme") && l.contains("(a) client")));
    if lines.next().is_none() {
        bail!(
            "{script}: no results table in its output (no header line starting \"scheme\" and naming \"(a) client\")"
        );
    }
    let mut rows = Vec::new();
    for line in lines {
        let l = line.trim();
        if l.is_empty() {
            break;
        }
        if l.chars().all(|c| c == '-') {
            continue;
        }
        rows.push(
            parse_row(l).with_context(|| format!("{script}: cannot read this line of its results table: {line:?}"))?,
        );
    }
    if rows.is_empty() {
        bail!("{script}: its results table has no rows");
    }
    Ok(Parsed { versions, rows })
}

/// `scheme n k t d | a | b_sum b_unmask b | drop c_sum c_unmask c | d_setup d_share d`.
fn parse_row(l: &str) -> Result<Row> {
    let groups: Vec<Vec<&str>> = l.split('|').map(|g| g.split_whitespace().collect()).collect();
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    if sizes != [5, 1, 3, 4, 3] {
        bail!("expected 5 | 1 | 3 | 4 | 3 fields, found {sizes:?}");
    }
    let int = |s: &str| s.parse::<usize>().with_context(|| format!("{s:?} is not a count"));
    let ms = |s: &str| {
        s.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .with_context(|| format!("{s:?} is not a time in ms"))
    };
    let (h, a, b, c, e) = (&groups[0], &groups[1], &groups[2], &groups[3], &groups[4]);
    Ok(Row {
        scheme: h[0].to_string(),
        n: int(h[1])?,
        k: int(h[2])?,
        t: int(h[3])?,
        d: int(h[4])?,
        client_ms: ms(a[0])?,
        server_sum_ms: ms(b[0])?,
        server_unmask_ms: ms(b[1])?,
        server_ms: ms(b[2])?,
        dropped: int(c[0])?,
        dropped_sum_ms: ms(c[1])?,
        dropped_unmask_ms: ms(c[2])?,
        dropped_ms: ms(c[3])?,
        setup_ms: ms(e[0])?,
        share_ms: ms(e[1])?,
        setup_total_ms: ms(e[2])?,
    })
}

/// Our three phases beside the script's rows for the same n and d.
///
/// `ours`: (masking, one node; coordinator, no dropouts; coordinator, K dropped) in ms.
/// What our run was, for the notes beside Flower's figures.
#[derive(Debug, Clone)]
pub struct Ours {
    pub word_bits: usize,
    /// Full SecAgg or SecAgg+ (with its k and t).
    pub secagg: String,
    /// Each node's neighbours.
    pub neighbours: usize,
    /// Nodes dropped in the dropout case.
    pub dropped: usize,
}

pub fn compare(
    parsed: Parsed,
    command: String,
    took: Duration,
    n: usize,
    d: usize,
    ours: [(String, f64); 3],
    ours_setup: &Ours,
) -> Report {
    let k = ours_setup.dropped;
    let find = |scheme: &str| parsed.rows.iter().find(|r| r.scheme == scheme && r.n == n && r.d == d).cloned();
    let (sa, sp) = (find("secagg"), find("secagg+"));
    let pick = |r: &Option<Row>, i: usize| {
        r.as_ref().map(|r| match i {
            0 => r.client_ms,
            1 => r.server_ms,
            _ => r.dropped_ms,
        })
    };
    let comparison = ours
        .into_iter()
        .enumerate()
        .map(|(i, (phase, ours_ms))| {
            let speedup = |f: Option<f64>| f.filter(|_| ours_ms > 0.0).map(|f| f / ours_ms);
            let (secagg_ms, secagg_plus_ms) = (pick(&sa, i), pick(&sp, i));
            Comparison {
                phase,
                ours_ms,
                secagg_ms,
                secagg_speedup: speedup(secagg_ms),
                secagg_plus_ms,
                secagg_plus_speedup: speedup(secagg_plus_ms),
                goal_vs_secagg: if i == 0 { GOAL_VS_SECAGG_PLUS } else { GOAL_VS_SECAGG },
                goal_vs_secagg_plus: GOAL_VS_SECAGG_PLUS,
            }
        })
        .collect();
    let dropped = sa.as_ref().or(sp.as_ref()).map(|r| r.dropped);
    let mut notes = vec![
        format!(
            "Flower's vectors are float32 quantized into Z_2^32 (its defaults); ours are {}-bit words; d is the same",
            ours_setup.word_bits
        ),
        "Flower's client time includes quantizing and decrypting the shares it holds; its server times exclude the clients' replies, as ours do".into(),
        "Flower's keys are SECP384R1 ECDH; its PRG is NumPy's; no network in either".into(),
    ];
    if let Some(sp) = &sp {
        notes.push(format!(
            "ours is {} ({} streams per node); Flower SecAgg+ masks with k = {} neighbours ({} streams per node)",
            ours_setup.secagg,
            ours_setup.neighbours + 1,
            sp.k,
            sp.k + 1
        ));
    }
    if sa.is_none() || sp.is_none() {
        notes.push(format!(
            "the script printed no {} row for n = {n}, d = {d}",
            if sa.is_none() { "secagg" } else { "secagg+" }
        ));
    }
    if let Some(f) = dropped.filter(|&f| f != k) {
        notes.push(format!("Flower dropped {f} of {n} clients, we dropped {k}: the dropout rows differ in work"));
    }
    Report {
        command,
        seconds: took.as_secs_f64(),
        versions: parsed.versions,
        secagg_plus_k: sp.as_ref().map(|r| r.k),
        dropped,
        rows: parsed.rows,
        comparison,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("testdata/flower_sample.txt");

    #[test]
    fn parses_a_captured_run() {
        let p = parse(SAMPLE, "flower_secaggplus.py").unwrap();
        assert!(p.versions.starts_with("flwr 1.41.0"), "{}", p.versions);
        assert_eq!(p.rows.len(), 2);
        let sa = p.rows.iter().find(|r| r.scheme == "secagg").unwrap();
        assert_eq!((sa.n, sa.k, sa.d, sa.dropped), (50, 49, 1_000_000, 5));
        assert!(sa.server_ms > 0.0 && sa.dropped_ms > 0.0 && sa.client_ms > 0.0);
        assert!((sa.server_ms - (sa.server_sum_ms + sa.server_unmask_ms)).abs() < 0.05);
        let sp = p.rows.iter().find(|r| r.scheme == "secagg+").unwrap();
        assert_eq!((sp.n, sp.k), (50, 6));
    }

    #[test]
    fn a_broken_row_names_the_script_and_the_line() {
        let broken = SAMPLE.replacen("secagg+ ", "secagg+ x ", 1);
        let err = format!("{:#}", parse(&broken, "flower_secaggplus.py").unwrap_err());
        assert!(err.contains("flower_secaggplus.py") && err.contains("secagg+ x"), "{err}");
        let err = format!("{:#}", parse("flwr 1.41.0\nno table\n", "s.py").unwrap_err());
        assert!(err.contains("s.py: no results table"), "{err}");
    }

    #[test]
    fn compares_per_phase() {
        let p = parse(SAMPLE, "s.py").unwrap();
        let sa = p.rows.iter().find(|r| r.scheme == "secagg").unwrap().clone();
        let ours = [("masking, one node".to_string(), 10.0), ("no".into(), sa.server_ms / 200.0), ("k".into(), 1e9)];
        let setup = Ours { word_bits: 32, secagg: "full SecAgg".into(), neighbours: 49, dropped: 5 };
        let r = compare(p, "cmd".into(), Duration::from_secs(1), 50, 1_000_000, ours, &setup);
        assert_eq!(r.secagg_plus_k, Some(6));
        assert!(r.notes.iter().any(|n| n.contains("ours are 32-bit words")), "{:?}", r.notes);
        assert!(r.notes.iter().any(|n| n.contains("ours is full SecAgg (50 streams per node)")), "{:?}", r.notes);
        assert!((r.comparison[1].secagg_speedup.unwrap() - 200.0).abs() < 1e-9);
        assert!(!r.comparison[2].goal_met());
        assert!(r.notes.iter().all(|n| !n.contains("dropped 5 of 50 clients, we")));
    }

    #[test]
    fn a_missing_script_says_where_it_lives() {
        let opts = Options { script: "/nonexistent/flower_secaggplus.py".into(), python: "python3".into(), reps: 1 };
        let err = run(&opts, 5, 10).unwrap_err().to_string();
        assert!(err.contains("../shared/bench") && err.contains("--flower-script"), "{err}");
    }
}
