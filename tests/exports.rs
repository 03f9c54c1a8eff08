//! A franchisee's real exports (issue 7, points 6, 7 and 13): a POS export with
//! Chinese headers, in UTF-8, UTF-8 with a byte-order mark and GB18030, loads every
//! row and gives the pooled RFM answer of the CDNOW rows it was made from; consent
//! files as staff write them; the refusal of a mostly unreadable export; and the
//! default node.toml passing `node check` on first run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fedcrm::pooled;
use fedcrm_node::data::{DataConfig, Dataset};

const FIXTURE: &str = include_str!("data/exports/pos_utf8.csv");
const CDNOW: &str = include_str!("data/cdnow/CDNOW_master.txt");
const ROWS: u64 = 1155;
const REFERENCE: u32 = 19970930;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// `[data.columns]` for the fixture's Chinese headers.
const COLUMNS: &str = r#"
[columns]
customer_key = "会员编号"
timestamp = "销售日期"
amount = "金额"
phone = "手机号"
channel = "渠道"
category = "品类"
"#;

fn gb18030(text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::GB18030.encode(text);
    assert!(!unmappable);
    bytes.into_owned()
}

/// The CDNOW rows the fixture was made from (customers 00001–00330).
fn cdnow_source() -> Vec<pooled::Row> {
    pooled::parse_cdnow(CDNOW).into_iter().filter(|r| r.customer.parse::<u32>().unwrap() <= 330).collect()
}

fn rows_of(ds: &Dataset) -> Vec<pooled::Row> {
    ds.purchases
        .iter()
        .map(|p| pooled::Row {
            customer: p.customer.clone(),
            ymd: p.day.year() as u32 * 10000 + p.day.month() as u32 * 100 + p.day.day() as u32,
            cents: p.amount_cents,
        })
        .collect()
}

/// A row's customer, channel and category.
type Labels = (String, Option<String>, Option<String>);

fn data_config(path: &Path, settings: &str) -> DataConfig {
    let text = format!("path = {:?}\n{settings}\n{COLUMNS}", path.display().to_string());
    toml::from_str(&text).unwrap()
}

#[test]
fn gb18030_and_bom_exports_give_the_rfm_result_of_the_utf8_original() {
    let dir = tempfile::tempdir().unwrap();
    let source = cdnow_source();
    assert_eq!(source.len() as u64, ROWS);
    let expected = pooled::segments(&source, REFERENCE);

    let variants: [(&str, Vec<u8>, &str, &str); 5] = [
        ("utf8.csv", FIXTURE.as_bytes().to_vec(), "", "UTF-8 (auto: every byte is valid UTF-8)"),
        ("bom.csv", [UTF8_BOM, FIXTURE.as_bytes()].concat(), "", "UTF-8 (byte-order mark found and stripped)"),
        (
            "bom-explicit.csv",
            [UTF8_BOM, FIXTURE.as_bytes()].concat(),
            "encoding = \"utf-8\"",
            "UTF-8 (byte-order mark found and stripped)",
        ),
        ("gb.csv", gb18030(FIXTURE), "", "GB18030 (auto: not UTF-8 from line 1 on, so read as GB18030)"),
        ("gb-explicit.csv", gb18030(FIXTURE), "encoding = \"gb18030\"", "GB18030 (data.encoding)"),
    ];
    let mut original: Option<Vec<Labels>> = None;
    for (name, bytes, settings, encoding) in variants {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let ds = data_config(&path, settings).load().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((ds.report.rows, ds.report.skipped), (ROWS, 0), "{name}: every row loads");
        assert_eq!(ds.report.encoding.unwrap().to_string(), encoding, "{name}");
        // The same rows as the CDNOW source, and the same RFM answer.
        assert_eq!(rows_of(&ds), source, "{name}: customer, date and amount of every row");
        assert_eq!(pooled::segments(&rows_of(&ds), REFERENCE), expected, "{name}: RFM cut points and segments");
        // Chinese text survives every encoding.
        let text: Vec<_> =
            ds.purchases.iter().map(|p| (p.customer.clone(), p.channel.clone(), p.category.clone())).collect();
        assert!(text.iter().any(|(_, ch, _)| ch.as_deref() == Some("天猫旗舰店")), "{name}");
        assert!(text.iter().any(|(_, _, cat)| cat.as_deref() == Some("翡翠")), "{name}");
        match &original {
            None => original = Some(text),
            Some(o) => assert_eq!(&text, o, "{name}: channels and categories as in the UTF-8 original"),
        }
    }
}

#[test]
fn a_bom_consent_file_excludes_every_listed_customer_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pos.csv");
    std::fs::write(&data, gb18030(FIXTURE)).unwrap();
    // As Notepad saves it: a byte-order mark before the first key, CRLF, comments,
    // blank lines, spaces, a key twice, a key of no customer and two unusable lines.
    let consent = "\u{FEFF}00001\r\n# withdrawn at the counter, 2026-11\r\n\r\n  00002  # by phone\r\n00003\r\n00001\r\n99999\r\n00004,2026-11-02\r\n00005 00006\r\n";
    let wpath = dir.path().join("withdrawn.txt");
    std::fs::write(&wpath, consent).unwrap();
    let mut cfg = data_config(&data, "");
    cfg.consent_withdrawals = Some(wpath.clone());
    let ds = cfg.load().unwrap();
    // 00004 to 00006 are on lines that are not one key each: excluded as a precaution.
    let withdrawn = ["00001", "00002", "00003", "00004", "00005", "00006"];
    for key in withdrawn {
        assert!(ds.purchases.iter().all(|p| p.customer != key), "{key} withdrew and takes part in nothing");
    }
    let c = &ds.consent;
    assert_eq!((c.entries, c.distinct, c.matched, c.unmatched), (5, 4, 3, 1));
    assert_eq!((c.unmatched_lines.clone(), c.junk_lines, c.junk_examples.clone()), (vec![7], 2, vec![8, 9]));
    assert_eq!((c.comment_or_blank_lines, c.junk_matched), (2, 3));
    let source = cdnow_source();
    let kept: Vec<_> = source.iter().filter(|r| !withdrawn.contains(&r.customer.as_str())).collect();
    assert_eq!(ds.purchases.len(), kept.len());
    assert_eq!(ds.withdrawn_rows as usize, source.len() - kept.len());
    assert!(
        ds.summary().to_string().contains(
            "4 withdrawals (3 matched, 25 rows excluded); 2 withdrawal lines are not one key each, 3 more customers"
        ),
        "{}",
        ds.summary()
    );

    // A GB18030 byte in the consent file under encoding = "utf-8": an error naming its line.
    std::fs::write(&wpath, gb18030("00001\n00002\n# 门店 撤回\n00003\n")).unwrap();
    let mut cfg = data_config(&data, "encoding = \"gb18030\"");
    cfg.consent_withdrawals = Some(wpath.clone());
    assert_eq!(cfg.load().unwrap().consent.matched, 3, "read in the configured encoding");
    cfg.encoding = fedcrm_node::data::TextEncoding::Utf8;
    std::fs::write(&data, FIXTURE).unwrap();
    let err = cfg.load().unwrap_err().to_string();
    assert!(err.contains("withdrawn.txt:3: bytes that are not valid UTF-8"), "{err}");
}

// ---- the binary, as a franchisee's IT person runs it ----

fn fedcrm(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedcrm")).args(args).current_dir(dir).output().unwrap()
}

/// `fedcrm config default node`, written to DIR/node.toml with `edits` applied.
fn default_node_toml(dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let out = fedcrm(dir, &["config", "default", "node"]);
    assert!(out.status.success());
    let mut text = String::from_utf8(out.stdout).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "the template has {from:?}");
        text = text.replacen(from, to, 1);
    }
    let p = dir.join("node.toml");
    std::fs::write(&p, text).unwrap();
    p
}

const CHINESE_HEADER: &str = "会员编号,手机号,渠道,销售日期,金额,品类,备注";
const ENGLISH_HEADER: &str = "customer_key,phone,channel,timestamp,amount,category,note";

const CHINESE_COLUMNS: [(&str, &str); 6] = [
    ("customer_key = \"customer_key\"", "customer_key = \"会员编号\""),
    ("timestamp = \"timestamp\"", "timestamp = \"销售日期\""),
    ("amount = \"amount\"", "amount = \"金额\""),
    ("phone = \"phone\"", "phone = \"手机号\""),
    ("channel = \"channel\"", "channel = \"渠道\""),
    ("category = \"category\"", "category = \"品类\""),
];

#[test]
fn the_default_node_config_passes_node_check_on_first_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = default_node_toml(dir.path(), &[]);
    // The only file the template names that `node check` reads is the export itself.
    let out = fedcrm(dir.path(), &["node", "check", "--config", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("data/purchases.csv"), "{err}");
    assert!(!err.contains("withdrawn"), "{err}");

    std::fs::create_dir(dir.path().join("data")).unwrap();
    let english = FIXTURE.replacen(CHINESE_HEADER, ENGLISH_HEADER, 1);
    std::fs::write(dir.path().join("data/purchases.csv"), english).unwrap();
    let out = fedcrm(dir.path(), &["node", "check", "--config", p.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("rows read:            1155") && text.contains("rows skipped:         0"), "{text}");
    assert!(text.contains("consent withdrawals:  no file configured"), "{text}");
    // Issue 10: the privacy policy and this month's charges (none on a fresh node).
    assert!(text.contains("differential privacy: required (σ² ≥ 4 per count); budget ε = 4 at δ = 1e-6"), "{text}");
    assert!(text.contains(": 0 charge(s), 0.0000 of 4 used, 4.0000 left"), "{text}");
    // Issue 12: what PSI would match on; the fixture's numbers are not mobiles (they
    // start 100…), so every customer is left out — counted by reason, never dropped.
    assert!(text.contains("private set intersection: matching on phone: 0 distinct identifier(s)"), "{text}");
    assert!(
        text.contains(
            "left out, not an identifier: 330 customer(s): phone number: 11 digits but not a mainland mobile"
        ),
        "{text}"
    );
    assert!(text.contains("answers no peer: compares only"), "{text}");

    // Configuring a consent file that is not there stops the node, and says what to do.
    let p = default_node_toml(dir.path(), &[("# consent_withdrawals = ", "consent_withdrawals = ")]);
    let out = fedcrm(dir.path(), &["node", "check", "--config", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a configured consent file that is missing is never ignored");
    assert!(err.contains("withdrawn.txt") && err.contains("does not exist") && err.contains("create it"), "{err}");
}

#[test]
fn node_check_shows_the_encoding_and_consent_counts_of_a_gb18030_export() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/purchases.csv"), gb18030(FIXTURE)).unwrap();
    std::fs::write(dir.path().join("data/withdrawn.txt"), "\u{FEFF}00001\n# note\n\nnobody\n00002 00003\n").unwrap();
    let mut edits = CHINESE_COLUMNS.to_vec();
    edits.push(("# consent_withdrawals = ", "consent_withdrawals = "));
    let p = default_node_toml(dir.path(), &edits);
    let out = fedcrm(dir.path(), &["node", "check", "--config", p.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("encoding:             GB18030 (auto: not UTF-8 from line 1 on"), "{text}");
    assert!(text.contains("2 entries (2 distinct): 1 match a customer in the data, 1 match none"), "{text}");
    assert!(text.contains("on lines 4\n"), "the unmatched key's line, never the key: {text}");
    assert!(!text.contains("nobody"), "{text}");
    assert!(text.contains("1 lines are not one key") && text.contains("on lines 5;"), "{text}");
    // Chinese channel names line up with the rest: the counts start in one column.
    let columns: std::collections::BTreeSet<usize> = text
        .lines()
        .filter(|l| l.starts_with("  channel "))
        .map(|l| {
            unicode_width::UnicodeWidthStr::width(&l[..l.rfind(' ').unwrap()])
                - l.split(' ').rev().nth(1).unwrap().len()
        })
        .collect();
    assert!(text.lines().any(|l| l.starts_with("  channel ") && !l.is_ascii()), "{text}");
    assert_eq!(columns.len(), 1, "{text}");
}

#[test]
fn a_gb18030_export_read_as_utf8_with_skipping_is_refused_naming_the_first_line_and_the_encoding() {
    // Issue 7, point 6: most rows were skipped, exit 0, and `node run` started.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let english = FIXTURE.replacen(CHINESE_HEADER, ENGLISH_HEADER, 1);
    std::fs::write(dir.path().join("data/purchases.csv"), gb18030(&english)).unwrap();
    let p = default_node_toml(
        dir.path(),
        &[("encoding = \"auto\"", "encoding = \"utf-8\""), ("on_bad_row = \"fail\"", "on_bad_row = \"skip\"")],
    );
    let out = fedcrm(dir.path(), &["node", "check", "--config", p.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("rows read:            1155") && text.contains("rows loaded:          220"), "{text}");
    assert!(text.contains("rows skipped:         935 (935 with undecodable bytes)"), "{text}");
    assert!(text.contains("    line 2: bytes that are not valid UTF-8"), "{text}");
    assert!(text.contains("REFUSED: node run would not start"), "{text}");
    for needle in [
        "935 of 1155 rows could not be read",
        "max_skipped_fraction = 0.01",
        "the first is line 2",
        "data.encoding = \"gb18030\"",
        "save the export as UTF-8",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
    // `node run` refuses before it dials anyone (no certificate exists here).
    let out = fedcrm(dir.path(), &["node", "run", "--config", p.to_str().unwrap()]);
    let run_err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && run_err.contains("935 of 1155 rows could not be read"), "{run_err}");
    assert!(!run_err.contains("connecting"), "{run_err}");
}
