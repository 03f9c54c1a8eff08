//! The overlap matrix's HQ-side view (issue 12, `src/overlap.rs`): ratios on a
//! hand-worked example, the checks on a release, the CSV, the JSON and the heat-map.

use fedcrm::overlap::{
    ChannelKind, ChannelSize, HeatMetric, MatrixCell, NoiseSummary, OverlapError, OverlapRelease, OverlapView,
    PairOverlap, overlap_csv, overlap_table, write_heatmap,
};

const TMALL: &str = "tmall.brand.example";
const HZ: &str = "store-hz.franchise.example";
const SH: &str = "store-sh.franchise.example";
const HANGZHOU: &str = "杭州金玉珠宝有限公司";

fn channel(node: &str, organisation: &str, kind: ChannelKind, customers: Option<f64>) -> ChannelSize {
    ChannelSize { node: node.into(), organisation: organisation.into(), kind, customers, sd: Some(2.0) }
}

fn pair(a: &str, b: &str, shared: Option<f64>, comparer: &str) -> PairOverlap {
    PairOverlap { a: a.into(), b: b.into(), shared, sd: shared.map(|_| 3.0), comparer: comparer.into(), segments: None }
}

/// Three channels: HQ's Tmall store (1000 customers) and two franchisees (400 and 50).
/// Tmall–Hangzhou share 120; Tmall–Shanghai is withheld; Hangzhou–Shanghai's noised 55
/// exceeds Shanghai's own 50.
fn release() -> OverlapRelease {
    OverlapRelease {
        run: "psi-2026-11-30".into(),
        channels: vec![
            channel(TMALL, "金玉珠宝集团", ChannelKind::Hq, Some(1000.0)),
            channel(HZ, HANGZHOU, ChannelKind::Franchisee, Some(400.0)),
            channel(SH, "上海金玉珠宝有限公司", ChannelKind::Franchisee, Some(50.0)),
        ],
        pairs: vec![
            pair(TMALL, HZ, Some(120.0), HZ),
            pair(TMALL, SH, None, SH),
            // Between two franchisees the lower name compares.
            pair(HZ, SH, Some(55.0), HZ),
        ],
        noise: Some(NoiseSummary { dp: true, epsilon: Some(0.5), delta: Some(1e-9) }),
    }
}

fn close(got: Option<f64>, want: f64) {
    let got = got.expect("a ratio");
    assert!((got - want).abs() < 1e-12, "got {got}, want {want}");
}

#[test]
fn ratios_on_a_hand_worked_example() {
    let v = OverlapView::new(&release()).unwrap();
    let [hq_hz, hq_sh, hz_sh] = &v.pairs[..] else { panic!("three pairs") };
    // 120 / (1000 + 400 − 120) = 120 / 1280; 120 / 1000; 120 / 400.
    close(hq_hz.jaccard, 0.09375);
    close(hq_hz.a_in_b, 0.12);
    close(hq_hz.b_in_a, 0.3);
    // Withheld: no ratio at all, never 0.
    assert_eq!((hq_sh.shared, hq_sh.jaccard, hq_sh.a_in_b, hq_sh.b_in_a), (None, None, None, None));
    // Noise pushed 55 above Shanghai's 50: the count stays as released, the ratio
    // 55 / 50 = 1.1 is clamped to 1; 55 / (400 + 50 − 55) = 55 / 395; 55 / 400.
    assert_eq!(hz_sh.shared, Some(55.0));
    close(hz_sh.jaccard, 55.0 / 395.0);
    close(hz_sh.a_in_b, 0.1375);
    close(hz_sh.b_in_a, 1.0);
    // The matrix: sizes on the diagonal, shared counts symmetric, the withheld cell withheld.
    assert_eq!(v.matrix[0][0], MatrixCell::Released { count: 1000.0, sd: Some(2.0) });
    assert_eq!(v.matrix[0][1], MatrixCell::Released { count: 120.0, sd: Some(3.0) });
    assert_eq!(v.matrix[1][0], v.matrix[0][1]);
    assert_eq!((v.matrix[0][2], v.matrix[2][0]), (MatrixCell::Withheld, MatrixCell::Withheld));
    assert_eq!(v.matrix[2][1], MatrixCell::Released { count: 55.0, sd: Some(3.0) });
}

#[test]
fn negative_noised_counts_are_kept_but_ratios_use_zero() {
    let mut r = release();
    r.channels[2].customers = Some(-2.0);
    r.pairs.truncate(1);
    r.pairs.push(pair(HZ, SH, Some(-1.0), HZ));
    r.channels.push(channel("pos.brand.example", "金玉珠宝集团", ChannelKind::Hq, None));
    r.pairs.push(pair(TMALL, "pos.brand.example", Some(30.0), TMALL));
    let v = OverlapView::new(&r).unwrap();
    let hz_sh = &v.pairs[1];
    assert_eq!(hz_sh.shared, Some(-1.0), "shown as released");
    close(hz_sh.jaccard, 0.0);
    close(hz_sh.a_in_b, 0.0);
    assert_eq!(hz_sh.b_in_a, None, "Shanghai's size clamps to 0: no denominator");
    // A withheld channel size: the shared count stands, the ratios that need it do not.
    let hq_pos = &v.pairs[2];
    close(hq_pos.a_in_b, 0.03);
    assert_eq!((hq_pos.jaccard, hq_pos.b_in_a), (None, None));
    // Two of HQ's own channels: HQ's side compares, and the table says whose they are.
    assert!(overlap_table(&v).contains("both channels are HQ's own"), "{}", overlap_table(&v));
}

#[test]
fn a_release_that_breaks_the_rules_is_refused_naming_what() {
    let refused = |edit: &dyn Fn(&mut OverlapRelease)| {
        let mut r = release();
        edit(&mut r);
        OverlapView::new(&r).unwrap_err()
    };
    let e = refused(&|r| r.channels.push(r.channels[1].clone()));
    assert!(matches!(e, OverlapError::DuplicateChannel { ref node, .. } if node == HZ), "{e}");
    let e = refused(&|r| r.pairs[0].b = "ghost.example".into());
    assert!(matches!(e, OverlapError::UnknownChannel { ref node, .. } if node == "ghost.example"), "{e}");
    assert_eq!(
        e.to_string(),
        "run psi-2026-11-30: pair tmall.brand.example–ghost.example names ghost.example, which is not a channel of \
         the run"
    );
    let e = refused(&|r| r.pairs.push(pair(HZ, HZ, Some(1.0), HZ)));
    assert!(matches!(e, OverlapError::SelfPair { .. }), "{e}");
    // The same pair the other way round is still the same pair.
    let e = refused(&|r| r.pairs.push(pair(SH, HZ, Some(54.0), HZ)));
    assert!(matches!(e, OverlapError::DuplicatePair { .. }), "{e}");
    let e = refused(&|r| r.pairs[0].comparer = SH.into());
    assert!(matches!(e, OverlapError::ComparerOutsidePair { .. }), "{e}");
    // HQ's side never compares when a franchisee takes part.
    let e = refused(&|r| r.pairs[0].comparer = TMALL.into());
    assert!(matches!(e, OverlapError::HqCompared { ref other, .. } if other == HZ), "{e}");
    let e = refused(&|r| r.pairs[0].shared = Some(f64::NAN));
    assert!(matches!(e, OverlapError::NotFinite { .. }), "{e}");
    let e = refused(&|r| r.channels[0].customers = Some(f64::INFINITY));
    assert!(matches!(e, OverlapError::NotFinite { .. }), "{e}");
    let e = refused(&|r| r.pairs[2].sd = Some(-1.0));
    assert!(matches!(e, OverlapError::NegativeSd { .. }), "{e}");
    let e = refused(&|r| r.noise = Some(NoiseSummary { dp: true, epsilon: Some(0.0), delta: None }));
    assert!(matches!(e, OverlapError::BadNoise { what: "epsilon", .. }), "{e}");
    let e = refused(&|r| r.noise = Some(NoiseSummary { dp: true, epsilon: Some(1.0), delta: Some(1.0) }));
    assert!(matches!(e, OverlapError::BadNoise { what: "delta", .. }), "{e}");
}

#[test]
fn a_release_parses_strictly() {
    let json = serde_json::to_string(&release()).unwrap();
    assert_eq!(serde_json::from_str::<OverlapRelease>(&json).unwrap(), release());
    assert!(json.contains(r#""kind":"franchisee""#), "{json}");
    let unknown_kind = json.replacen(r#""kind":"franchisee""#, r#""kind":"partner""#, 1);
    assert!(serde_json::from_str::<OverlapRelease>(&unknown_kind).is_err());
    let unknown_field = json.replacen(r#""comparer":"#, r#""exact":120,"comparer":"#, 1);
    let e = serde_json::from_str::<OverlapRelease>(&unknown_field).unwrap_err();
    assert!(e.to_string().contains("unknown field `exact`"), "{e}");
}

#[test]
fn json_round_trips_and_withheld_reads_null() {
    let v = OverlapView::new(&release()).unwrap();
    let json = serde_json::to_string_pretty(&v).unwrap();
    assert_eq!(serde_json::from_str::<OverlapView>(&json).unwrap(), v);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(value["pairs"][1]["shared"].is_null() && value["pairs"][1]["jaccard"].is_null(), "{json}");
    assert_eq!(value["matrix"][0][2]["cell"], "withheld");
    assert_eq!(value["matrix"][1][1]["cell"], "released");
    assert_eq!(value["matrix"][1][1]["count"], 400.0);
}

#[test]
fn csv_leaves_withheld_fields_empty() {
    let csv = overlap_csv(&OverlapView::new(&release()).unwrap());
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0],
        "run,a,b,organisation_a,organisation_b,customers_a,customers_b,shared,shared_sd,jaccard,a_in_b,b_in_a,comparer"
            .split(',')
            .collect::<Vec<_>>()
    );
    assert_eq!(rows.len(), 4, "{csv}");
    assert_eq!(
        rows[1],
        [
            "psi-2026-11-30",
            TMALL,
            HZ,
            "金玉珠宝集团",
            HANGZHOU,
            "1000.0",
            "400.0",
            "120.0",
            "3.0",
            "0.09375",
            "0.12",
            "0.3",
            HZ
        ]
    );
    assert_eq!(rows[2][7..12], ["", "", "", "", ""], "{csv}");
    assert_eq!(rows[2][5..7], ["1000.0", "50.0"], "the channel sizes are not withheld");
    assert_eq!(rows[3][11], "1.0", "clamped");
    assert_eq!(rows[3][7], "55.0", "as released");
}

#[test]
fn the_table_says_who_compared_and_that_hq_never_saw_an_exact_count() {
    let table = overlap_table(&OverlapView::new(&release()).unwrap());
    for want in [
        "PSI run psi-2026-11-30",
        HANGZHOU,
        "1000 ± 2",
        "120 ± 3",
        "withheld",
        "0.094",
        "12.0 %",
        "100.0 %",
        "tmall.brand.example–store-hz.franchise.example: compared on store-hz.franchise.example; HQ received only \
         the noised count and never sees an exact one",
        "ε = 0.5, δ = 1e-9",
        "tmall.brand.example–store-sh.franchise.example: compared on store-sh.franchise.example; withheld: its \
         noised count is below HQ's release threshold",
    ] {
        assert!(table.contains(want), "{want} missing from\n{table}");
    }
    // The matrix's rows line up although organisation names are two columns a character.
    let matrix: Vec<&str> =
        table.lines().skip_while(|l| !l.contains("shared customers")).skip(1).take_while(|l| !l.is_empty()).collect();
    assert_eq!(matrix.len(), 4, "{table}");
    assert!(matrix[1..].iter().all(|l| l.len() == matrix[0].len()), "{table}");
    let mut exact = release();
    exact.noise = Some(NoiseSummary { dp: false, epsilon: None, delta: None });
    let table = overlap_table(&OverlapView::new(&exact).unwrap());
    assert!(!table.contains("never sees an exact") && table.contains("dp off"), "{table}");
    assert!(
        table.contains("withheld: below the comparing node's minimum for exact counts (it sent no value)"),
        "{table}"
    );
}

#[test]
fn the_heat_map_writes_a_png_and_an_svg_with_every_name() {
    let dir = tempfile::tempdir().unwrap();
    let (png_path, svg_path) = (dir.path().join("overlap.png"), dir.path().join("overlap.svg"));
    let mut r = release();
    r.channels[2].organisation = "上海<script>alert(1)</script>珠宝 & Co".into();
    let v = OverlapView::new(&r).unwrap();
    for metric in [HeatMetric::Jaccard, HeatMetric::Shared, HeatMetric::ContainmentRowInColumn] {
        write_heatmap(&v, metric, &png_path, &svg_path).unwrap();

        let png = std::fs::read(&png_path).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{metric:?}: not a PNG");
        let mut reader = png::Decoder::new(std::io::Cursor::new(&png)).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut pixels).unwrap();
        assert!(frame.width >= 500 && frame.height >= 500, "{frame:?}");
        let pixels = &pixels[..frame.buffer_size()];
        // The dark end of the scale is there (at least the bar), and so is text.
        assert!(pixels.chunks(3).any(|p| p[0] < 40 && p[2] > 90), "{metric:?}: no dark blue");
        assert!(pixels.chunks(3).filter(|p| p == &[0, 0, 0]).count() > 500, "{metric:?}: no text");

        let svg = std::fs::read_to_string(&svg_path).unwrap();
        for want in [TMALL, HZ, SH, HANGZHOU, "金玉珠宝集团", "withheld", "Noto Sans CJK SC", "PSI run psi-2026-11-30"]
        {
            assert!(svg.contains(want), "{metric:?}: {want} missing from the SVG");
        }
        // Each cell's figure, in the metric's orientation: row Tmall, column Hangzhou is
        // 120 / 1000 of Tmall's customers; the other way round 120 / 400.
        let figures: &[&str] = match metric {
            HeatMetric::Jaccard => &["0.094", "0.139"],
            HeatMetric::Shared => &["1000", "120", "55"],
            HeatMetric::ContainmentRowInColumn => &["0.120", "0.300", "0.138"],
        };
        for want in figures {
            assert!(svg.contains(&format!(">\n{want}\n</text>")), "{metric:?}: {want} missing from the SVG");
        }
        // The withheld pair's two cells (and the legend's swatch) read "withheld".
        // A withheld cell drawn as a figure (0, say) would leave only the legend's.
        assert_eq!(svg.matches(">\nwithheld\n</text>").count(), 3, "{metric:?}: two withheld cells and the legend");
        assert!(svg.contains("上海&lt;script&gt;alert(1)&lt;/script&gt;珠宝 &amp; Co"), "{svg}");
        assert!(!svg.contains("<script"), "{svg}");
    }
    #[cfg(unix)]
    for p in [&png_path, &svg_path] {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o644, "{}", p.display());
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "no temporary file left behind: {left:?}");
}

#[test]
fn a_heat_map_into_a_missing_directory_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("missing/overlap.png");
    let v = OverlapView::new(&release()).unwrap();
    let e = write_heatmap(&v, HeatMetric::Jaccard, &png, &dir.path().join("overlap.svg")).unwrap_err();
    assert!(matches!(e, OverlapError::Write { .. }), "{e}");
    assert!(e.to_string().starts_with(&format!("heat-map {}: ", png.display())), "{e}");
}
