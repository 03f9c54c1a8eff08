//! The audit benchmark runs and verifies what it wrote. No timing assertions.
//!
//! `FEDCRM_BENCH_RECORDS=1000000 cargo test --release -p fedcrm-audit --test bench_smoke -- --nocapture`
//! runs it at that size and prints the figures.

use fedcrm_audit::verify::bench;

#[test]
fn bench_runs_and_verifies() {
    let requested: u64 = std::env::var("FEDCRM_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let figures = bench(requested).unwrap();
    // The verifier counted every egress record, a seal per 64 and the log-opened records.
    assert!(figures.records > requested + requested / 64, "{figures:?}");
    assert!(figures.bytes > requested * 100, "{figures:?}");
    for value in [
        figures.write_seconds,
        figures.verify_seconds,
        figures.floor_seconds,
        figures.records_per_second,
        figures.floor_records_per_second,
        figures.ratio,
    ] {
        assert!(value.is_finite() && value > 0.0, "{figures:?}");
    }
    if std::env::var_os("FEDCRM_BENCH_RECORDS").is_some() {
        println!("{}", serde_json::to_string_pretty(&figures).unwrap());
    }
}
