//! The bench's report as a readable table (`--json` prints the same `Report` as JSON).

use std::fmt::Write;

use super::{GOAL_RATIO, Report, flower};

/// Milliseconds with three significant digits or more.
fn fmt_ms(x: f64) -> String {
    match x {
        x if x < 10.0 => format!("{x:.3}"),
        x if x < 100.0 => format!("{x:.2}"),
        x => format!("{x:.1}"),
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "-".into())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Words of `text` after `first`, wrapped at 100 columns with a three-space indent.
fn wrapped(s: &mut String, first: &str, text: &str) {
    let mut line = String::from(first);
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 100 {
            let _ = writeln!(s, "{line}");
            line = String::from("   ");
        }
        line.push(' ');
        line.push_str(word);
    }
    let _ = writeln!(s, "{line}");
}

/// The human-readable report.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let _ = writeln!(s, "fedcrm bench secagg — measured, never asserted");
    let _ = writeln!(
        s,
        "  n = {} nodes, d = {} words of {} bits ({:.1} MiB per vector), t = {}, dropout case: {} of {} dropped after sharing, before masking",
        r.n,
        r.d,
        r.word_bits,
        mib((r.word_bits / 8 * r.d) as u64),
        r.t,
        r.dropped,
        r.n
    );
    let _ = writeln!(s, "  secure aggregation: {}", r.secagg);
    let _ = writeln!(s, "  measured: {}, {} threads", r.prg, r.threads);
    let a = &r.aes;
    let _ = writeln!(
        s,
        "  AES: CPU has AES-NI {}, VAES {}, AVX-512F {}; this build runs {}{}",
        yes(a.cpu_aes_ni),
        yes(a.cpu_vaes),
        yes(a.cpu_avx512f),
        a.backend,
        if a.hardware { "" } else { " (measured code and floor alike)" }
    );
    wrapped(&mut s, "  floor:", &r.floor);
    let _ =
        writeln!(s, "  coordinator times exclude the clients' work (sharing, masking, answering the unmask request)");
    let _ = writeln!(
        s,
        "  every row is per round except the key setup, paid once per analysis (its rounds then need no X25519)"
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<44} {:>9} {:>9} {:>7}  floor's work (counted from the protocol)",
        "phase", "time ms", "floor ms", "ratio"
    );
    for row in &r.times {
        let (t, f, q) = (fmt_ms(row.time_ms), fmt_ms(row.floor_ms), fmt_ratio(row.ratio));
        let _ = writeln!(s, "{:<44} {t:>9} {f:>9} {q:>7}  {}", row.phase, row.counts.describe());
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<44} {:>9} {:>9} {:>7}",
        "coordinator's peak memory (RSS growth)", "peak MiB", "floor MiB", "ratio"
    );
    for row in &r.memory {
        let peak = row.peak_bytes.map(|b| format!("{:.1}", mib(b))).unwrap_or_else(|| "n/a".into());
        let _ = writeln!(s, "{:<44} {:>9} {:>9.1} {:>7}", row.phase, peak, mib(row.floor_bytes), fmt_ratio(row.ratio));
    }
    wrapped(&mut s, "  memory:", r.memory_measure);
    let _ = writeln!(s);
    let over: Vec<&str> = r
        .times
        .iter()
        .filter(|x| x.ratio.is_some_and(|q| q >= GOAL_RATIO))
        .map(|x| x.phase.trim())
        .chain(r.memory.iter().filter(|x| x.ratio.is_some_and(|q| q >= GOAL_RATIO)).map(|x| x.phase.trim()))
        .collect();
    if over.is_empty() {
        let _ = writeln!(s, "goal (every ratio under {GOAL_RATIO}×): met");
    } else {
        let _ = writeln!(s, "goal (every ratio under {GOAL_RATIO}×): not met for {}", over.join("; "));
    }
    let _ = writeln!(s, "unmasked sums equal the plain sums of the survivors' inputs: {}", r.sums_verified);
    if let Some(f) = &r.flower {
        flower_table(&mut s, f);
    }
    s
}

fn flower_table(s: &mut String, f: &flower::Report) {
    let opt_ms = |x: Option<f64>| x.map(fmt_ms).unwrap_or_else(|| "-".into());
    let speedup = |x: Option<f64>| x.map(|x| format!("{x:.1}×")).unwrap_or_else(|| "-".into());
    let _ = writeln!(s);
    let _ = writeln!(s, "Flower, same machine, same run ({}; script took {:.1} s)", f.versions, f.seconds);
    let _ = writeln!(s, "  {}", f.command);
    let k = f.secagg_plus_k.map(|k| format!("SecAgg+ k={k}")).unwrap_or_else(|| "SecAgg+".into());
    let _ = writeln!(
        s,
        "{:<34} {:>9} {:>11} {:>9} {:>13} {:>9}  goal",
        "phase",
        "ours ms",
        "SecAgg ms",
        "speed-up",
        format!("{k} ms"),
        "speed-up"
    );
    for c in &f.comparison {
        let sign = |g: f64| if g > 1.0 { "≥" } else { ">" };
        let goal = format!(
            "{}{}× / {}{}×: {}",
            sign(c.goal_vs_secagg),
            c.goal_vs_secagg,
            sign(c.goal_vs_secagg_plus),
            c.goal_vs_secagg_plus,
            if c.goal_met() { "met" } else { "not met" }
        );
        let _ = writeln!(
            s,
            "{:<34} {:>9} {:>11} {:>9} {:>13} {:>9}  {goal}",
            c.phase,
            fmt_ms(c.ours_ms),
            opt_ms(c.secagg_ms),
            speedup(c.secagg_speedup),
            opt_ms(c.secagg_plus_ms),
            speedup(c.secagg_plus_speedup)
        );
    }
    let unmet: Vec<&str> = f.comparison.iter().filter(|c| !c.goal_met()).map(|c| c.phase.as_str()).collect();
    if unmet.is_empty() {
        let _ = writeln!(
            s,
            "goal (coordinator ≥ 100× Flower SecAgg and faster than SecAgg+; masking faster than both): met"
        );
    } else {
        let _ = writeln!(
            s,
            "goal (coordinator ≥ 100× Flower SecAgg and faster than SecAgg+; masking faster than both): not met for {}",
            unmet.join("; ")
        );
    }
    for note in &f.notes {
        wrapped(s, "  note:", note);
    }
}
