//! Loading purchase files end to end: settings, line numbers, encodings, skipping limits, consent.

use super::*;

const HEADER: &str = "customer_key,phone,channel,timestamp,amount,category\n";

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn csv_config(path: PathBuf) -> DataConfig {
    DataConfig::new(Format::Csv, path)
}

#[test]
fn csv_bad_row_is_reported_with_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "x.csv",
        format!("{HEADER}c1,13800000000,store,2024-01-02,100.00,ring\nc2,,online,2024-13-01,5,\n").as_bytes(),
    );
    let mut cfg = csv_config(p);
    let err = cfg.load().unwrap_err().to_string();
    assert!(err.contains(":3:") && err.contains("2024-13-01"), "{err}");
    cfg.on_bad_row = OnBadRow::Skip;
    cfg.max_skipped_fraction = 0.5;
    let ds = cfg.load().unwrap();
    assert_eq!((ds.purchases.len(), ds.report.skipped), (1, 1));
    assert!(!format!("{:?}", ds.purchases[0]).contains("138000"));
}

#[test]
fn one_line_number_counts_the_file_lines() {
    // A quoted field spanning two lines, an empty line and a row of empty cells: the
    // bad row is on line 7 of the file, and every message says 7.
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{HEADER}c1,,\"shop\nfloor 2\",2024-01-02,1.00,\n\nc2,,web,2024-01-03,2.00,\n,,,,,\nc3,,web,2024-02-30,3.00,\n"
    );
    let mut cfg = csv_config(write(&dir, "x.csv", text.as_bytes()));
    let err = cfg.load().unwrap_err().to_string();
    assert!(err.contains("x.csv:7: date \"2024-02-30\" does not exist"), "{err}");
    cfg.on_bad_row = OnBadRow::Skip;
    let ds = cfg.read().unwrap();
    assert_eq!(ds.report.skipped_examples, vec![(7, "date \"2024-02-30\" does not exist".to_string())]);
    assert_eq!((ds.report.rows, ds.report.read()), (2, 3));
    let err = cfg.admit(&ds).unwrap_err().to_string();
    assert!(err.contains("the first is line 7: date"), "{err}");
}

#[test]
fn mapped_columns_are_found_and_a_missing_one_lists_the_headers() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "pos.csv", "会员编号,销售日期,金额,门店\nV001,2024-01-02,88.00,西湖店\n".as_bytes());
    let mut cfg = csv_config(p);
    cfg.columns = Columns {
        customer_key: "会员编号".into(),
        timestamp: "销售日期".into(),
        amount: "金额".into(),
        phone: String::new(),
        channel: "门店".into(),
        category: String::new(),
        birthday: None,
        anniversary: None,
        email: None,
        quantity: None,
    };
    let ds = cfg.load().unwrap();
    assert_eq!(ds.purchases.len(), 1);
    assert_eq!((ds.purchases[0].customer.as_str(), ds.purchases[0].amount_cents), ("V001", 8800));
    assert_eq!(ds.purchases[0].channel.as_deref(), Some("西湖店"));
    cfg.columns.amount = "实付金额".into();
    let err = cfg.load().unwrap_err().to_string();
    assert!(
        err.contains("no column \"实付金额\" (data.columns.amount)")
            && err.contains("[\"会员编号\", \"销售日期\", \"金额\", \"门店\"]"),
        "{err}"
    );
    cfg.columns.amount = " ".into();
    assert!(cfg.load().unwrap_err().to_string().contains("data.columns.amount is empty"));
}

#[test]
fn unknown_column_keys_and_bad_fractions_are_refused() {
    let err =
        toml::from_str::<DataConfig>("path = \"x.csv\"\n[columns]\ncustomer = \"会员编号\"\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `customer`"), "{err}");
    let cfg: DataConfig = toml::from_str("path = \"x.csv\"\nmax_skipped_fraction = 5.0\n").unwrap();
    assert!(cfg.validate().unwrap_err().contains("max_skipped_fraction = 5 is not a fraction"));
    let cfg: DataConfig = toml::from_str("path = \"x\"\nformat = \"cdnow\"\n[columns]\namount = \"金额\"\n").unwrap();
    assert!(cfg.validate().unwrap_err().contains("formats \"csv\" and \"postgres\"; remove it for format = \"cdnow\""));
    let cfg: DataConfig = toml::from_str("path = \"x\"\nencoding = \"gbk\"\n").unwrap();
    assert_eq!(cfg.encoding, TextEncoding::Gb18030);
    assert!(toml::from_str::<DataConfig>("path = \"x\"\nencoding = \"latin1\"\n").is_err());
}

const DATED: &str = "customer_key,phone,channel,timestamp,amount,category,birthday,anniversary\n";

#[test]
fn birthdays_and_anniversaries_are_read_when_present_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{DATED}c1,,store,2024-01-02T10:00:00+08:00,100.00,gold,1988-05-20,2015-10-01\nc2,,store,2024-01-03,5.00,jade,,\nc3,,web,2024-01-04,6.00,gold,1990-02-28,\n"
    );
    let ds = csv_config(write(&dir, "x.csv", text.as_bytes())).load().unwrap();
    let day = |y, m, d| Some(Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d).unwrap());
    let got: Vec<_> = ds.purchases.iter().map(|p| (p.birthday, p.anniversary)).collect();
    assert_eq!(got, vec![(day(1988, 5, 20), day(2015, 10, 1)), (None, None), (day(1990, 2, 28), None)]);
    let debug = format!("{:?}", ds.purchases[0]);
    assert!(!debug.contains("1988") && !debug.contains("2015"), "{debug}");

    // An export without the columns reads as before: no dates.
    let ds = csv_config(write(&dir, "old.csv", format!("{HEADER}c1,,store,2024-01-02,1.00,gold\n").as_bytes()))
        .load()
        .unwrap();
    assert_eq!((ds.purchases[0].birthday, ds.purchases[0].anniversary), (None, None));
}

#[test]
fn a_malformed_birthday_is_a_bad_row_naming_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{DATED}c1,,store,2024-01-02,1.00,gold,1988-05-20,\nc2,,store,2024-01-02,1.00,gold,1990-02-30,\nc3,,store,2024-01-02,1.00,gold,,20/05/2015\n"
    );
    let mut cfg = csv_config(write(&dir, "x.csv", text.as_bytes()));
    let err = cfg.load().unwrap_err().to_string();
    assert!(err.contains("x.csv:3: birthday: date \"1990-02-30\" does not exist"), "{err}");
    cfg.on_bad_row = OnBadRow::Skip;
    let ds = cfg.read().unwrap();
    assert_eq!(
        ds.report.skipped_examples,
        vec![
            (3, "birthday: date \"1990-02-30\" does not exist".to_string()),
            (4, "anniversary: date \"20/05/2015\" is not YYYY-MM-DD".to_string())
        ]
    );
    assert_eq!(ds.report.rows, 1);
}

#[test]
fn renamed_date_columns_must_exist_and_are_named_in_messages() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "pos.csv",
        "会员编号,销售日期,金额,生日,结婚纪念日\nV1,2024-01-02,88.00,1990-01-02,\nV2,2024-01-03,9.00,1990-13-02,\n"
            .as_bytes(),
    );
    let mut cfg = csv_config(p);
    cfg.columns = Columns {
        customer_key: "会员编号".into(),
        timestamp: "销售日期".into(),
        amount: "金额".into(),
        phone: String::new(),
        channel: String::new(),
        category: String::new(),
        birthday: Some("生日".into()),
        anniversary: Some("结婚纪念日".into()),
        email: None,
        quantity: None,
    };
    let err = cfg.load().unwrap_err().to_string();
    assert!(err.contains("pos.csv:3: 生日 (birthday): date \"1990-13-02\" has month 13"), "{err}");
    cfg.on_bad_row = OnBadRow::Skip;
    cfg.max_skipped_fraction = 0.5;
    let ds = cfg.load().unwrap();
    assert_eq!(ds.purchases[0].birthday, Some(Date::from_calendar_date(1990, time::Month::January, 2).unwrap()));

    // Configured but absent: an error like any named column; "" ignores the column.
    cfg.columns.anniversary = Some("纪念日".into());
    let err = cfg.load().unwrap_err().to_string();
    assert!(err.contains("no column \"纪念日\" (data.columns.anniversary)"), "{err}");
    cfg.columns.anniversary = Some(String::new());
    cfg.columns.birthday = Some(String::new());
    let ds = cfg.load().unwrap();
    assert_eq!((ds.report.rows, ds.purchases[1].birthday), (2, None), "an ignored column is not parsed");

    // In node.toml.
    let cfg: DataConfig = toml::from_str("path = \"x\"\n[columns]\nbirthday = \"生日\"\n").unwrap();
    assert_eq!((cfg.columns.birthday.as_deref(), cfg.columns.anniversary), (Some("生日"), None));
}

fn gb18030_export() -> Vec<u8> {
    // 1 of 4 rows is ASCII only; three carry Chinese channel names.
    let text = format!(
        "{HEADER}c1,,门店,2024-01-02,1.00,黄金\nc2,,web,2024-01-03,2.00,\nc3,,天猫,2024-01-04,3.00,\nc4,,门店,2024-01-05,4.00,\n"
    );
    encoding_rs::GB18030.encode(&text).0.into_owned()
}

#[test]
fn a_gb18030_export_read_as_utf8_names_the_line_and_the_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = csv_config(write(&dir, "pos.csv", &gb18030_export()));
    cfg.encoding = TextEncoding::Utf8;
    let err = cfg.load().unwrap_err().to_string();
    assert!(err.contains("pos.csv:2: bytes that are not valid UTF-8"), "{err}");
    assert!(err.contains("data.encoding = \"gb18030\"") && err.contains("save the export as UTF-8"), "{err}");

    cfg.on_bad_row = OnBadRow::Skip;
    let ds = cfg.read().unwrap();
    assert_eq!((ds.report.rows, ds.report.skipped, ds.report.undecodable), (1, 3, 3));
    let err = cfg.load().unwrap_err().to_string();
    assert!(err.contains("3 of 4 rows could not be read (75.0 %)"), "{err}");
    assert!(err.contains("the first is line 2: bytes that are not valid UTF-8"), "{err}");
    assert!(err.contains("set data.encoding = \"gb18030\""), "{err}");

    for enc in [TextEncoding::Auto, TextEncoding::Gb18030] {
        cfg.encoding = enc;
        let ds = cfg.load().unwrap();
        assert_eq!((ds.report.rows, ds.report.skipped), (4, 0));
        assert_eq!(ds.purchases[2].channel.as_deref(), Some("天猫"));
    }
    assert_eq!(cfg.read().unwrap().report.encoding.unwrap().detection, Detection::Configured);
    cfg.encoding = TextEncoding::Auto;
    let used = cfg.read().unwrap().report.encoding.unwrap();
    assert_eq!(used.to_string(), "GB18030 (auto: not UTF-8 from line 2 on, so read as GB18030)");
}

#[test]
fn a_damaged_row_in_a_utf8_export_is_named_and_the_rest_reads_right() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = HEADER.to_string();
    for i in 0..150 {
        text.push_str(&format!("c{i},,门店,2024-01-02,1.00,黄金\n"));
    }
    let mut bytes = text.into_bytes();
    let at = bytes.len() - 6; // inside 黄金 of the last row, line 151
    bytes[at] = 0xC0;
    let mut cfg = csv_config(write(&dir, "x.csv", &bytes));
    let err = cfg.load().unwrap_err().to_string();
    assert!(err.contains("x.csv:151: bytes that are not valid UTF-8; the rest of the file is UTF-8"), "{err}");
    cfg.on_bad_row = OnBadRow::Skip;
    let ds = cfg.load().unwrap();
    assert_eq!((ds.report.rows, ds.report.skipped), (149, 1));
    assert!(ds.purchases.iter().all(|p| p.channel.as_deref() == Some("门店")), "not read as GB18030");
}

#[test]
fn skipping_within_the_limit_is_allowed_and_above_it_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = HEADER.to_string();
    for i in 0..199 {
        text.push_str(&format!("c{i},,web,2024-01-02,1.00,\n"));
    }
    text.push_str("c199,,web,someday,1.00,\n");
    let mut cfg = csv_config(write(&dir, "x.csv", text.as_bytes()));
    cfg.on_bad_row = OnBadRow::Skip;
    // 1 of 200 = 0.5 %: under the 1 % default.
    assert_eq!(cfg.load().unwrap().report.skipped, 1);
    cfg.max_skipped_fraction = 0.0;
    let err = cfg.load().unwrap_err().to_string();
    assert!(err.contains("1 of 200 rows") && err.contains("line 201: date \"someday\""), "{err}");
    assert!(!err.contains("encoding"), "a field error is not blamed on the encoding: {err}");
}

#[test]
fn consent_is_applied_counted_and_a_missing_file_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = csv_config(write(
        &dir,
        "x.csv",
        format!("{HEADER}c1,,,2024-01-02,1.00,\nc2,,,2024-01-02,1.00,\nc1,,,2024-01-03,1.00,\nc3,,,2024-01-02,1.00,\n")
            .as_bytes(),
    ));
    cfg.consent_withdrawals = Some(write(&dir, "w.txt", "\u{FEFF}c1\n# note\n\nnobody\nc8 c9\n".as_bytes()));
    let ds = cfg.load().unwrap();
    assert!(ds.purchases.iter().all(|p| p.customer != "c1"), "the first key after the BOM is honoured");
    assert_eq!((ds.withdrawn_rows, ds.withdrawn_customers, ds.customers), (2, 1, 2));
    let c = &ds.consent;
    assert_eq!((c.entries, c.matched, c.unmatched, c.junk_lines), (2, 1, 1, 1));
    assert_eq!((c.unmatched_lines.clone(), c.junk_examples.clone()), (vec![4], vec![5]));
    assert_eq!(
        ds.summary().to_string(),
        "loaded 2 rows (0 skipped) for 2 customers; 2 withdrawals (1 matched, 2 rows excluded); 1 withdrawal lines are not one key each, 0 more customers named on them excluded (see fedcrm node check); read as UTF-8 (auto: every byte is valid UTF-8)"
    );
    cfg.consent_withdrawals = Some(dir.path().join("absent.txt"));
    let err = cfg.load().unwrap_err().to_string();
    assert!(err.contains("absent.txt") && err.contains("does not exist"), "{err}");
}

#[test]
fn cdnow_undecodable_lines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DataConfig::new(Format::Cdnow, write(&dir, "c.txt", b"1 19970101 1 11.77\n2 1997\xFF0102 1 1.00\n"));
    cfg.encoding = TextEncoding::Utf8;
    let err = cfg.load().unwrap_err().to_string();
    assert!(err.contains("c.txt:2: bytes that are not valid UTF-8"), "{err}");
}

proptest::proptest! {
    #[test]
    fn readers_never_panic_on_arbitrary_bytes(bytes: Vec<u8>, skip: bool) {
        let on_bad = if skip { OnBadRow::Skip } else { OnBadRow::Fail };
        let path = Path::new("x");
        for enc in [TextEncoding::Auto, TextEncoding::Utf8, TextEncoding::Gb18030] {
            let Ok(decoded) = decode::decode(&bytes, enc) else { continue };
            let mut report = LoadReport::default();
            let _ = rows::csv(path, &decoded, &Columns::default(), on_bad, &mut report);
            let mut report = LoadReport::default();
            let _ = rows::cdnow(path, &decoded, on_bad, &mut report);
            let _ = Withdrawals::parse(path, &decoded);
        }
    }
}

#[test]
fn an_email_column_is_read_when_the_header_has_one_and_matched_on_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let text = "customer_key,phone,channel,timestamp,amount,category,email\n\
                C1,,tmall,2024-01-02,88.00,gold, Li.Na@Example.COM \n\
                C2,,tmall,2024-01-03,18.00,gold,not-an-address\n\
                C3,,tmall,2024-01-04,28.00,gold,\n";
    let p = write(&dir, "pos.csv", text.as_bytes());
    let ds = csv_config(p).load().unwrap();
    let ids = crate::identifiers::customer_identifiers(&ds.purchases, crate::identifiers::MatchOn::Email);
    assert_eq!(ids.ids, vec!["li.na@example.com"]);
    assert_eq!((ids.empty, ids.bad_total()), (1, 1));
    // Debug never shows it.
    assert!(!format!("{:?}", ds.purchases[0]).contains("Li.Na"));
}

#[test]
fn a_database_source_is_configured_without_a_password_and_with_one_of_table_or_query() {
    let base = "format = \"postgres\"\nurl = \"postgres://reader@db:5432/pos\"\npassword_env = \"PW\"\n";
    let ok: DataConfig = toml::from_str(&format!("{base}sslmode = \"disable\"\ntable = \"pos.sales\"\n")).unwrap();
    let s = ok.postgres().unwrap();
    assert_eq!((s.time_zone.as_str(), s.query_timeout_seconds), ("Asia/Shanghai", 600));
    ok.validate().unwrap();
    let refused = |extra: &str, why: &str| {
        let cfg: DataConfig = toml::from_str(&format!("{base}{extra}")).unwrap();
        let err = cfg.validate().unwrap_err();
        assert!(err.contains(why), "{extra}: {err}");
    };
    refused("sslmode = \"disable\"\n", "needs data.table");
    refused("sslmode = \"disable\"\ntable = \"t\"\nquery = \"SELECT 1\"\n", "not both");
    refused("table = \"t\"\n", "needs data.sslrootcert");
    refused("sslmode = \"disable\"\ntable = \"t\"\npath = \"x.csv\"\n", "data.path is for files");
    let inline: DataConfig = toml::from_str(
        "format = \"postgres\"\nurl = \"postgres://reader:secret@db/pos\"\nsslmode = \"disable\"\ntable = \"t\"\n",
    )
    .unwrap();
    let err = inline.validate().unwrap_err();
    assert!(err.contains("holds a password") && !err.contains("secret"), "{err}");
    let csv: DataConfig = toml::from_str("path = \"x.csv\"\ntable = \"t\"\n").unwrap();
    assert!(csv.validate().unwrap_err().contains("data.table apply to format = \"postgres\" only"));
    assert_eq!(
        postgres::quote_name("pos.\"Sales 2024\""),
        "\"pos\".\"Sales 2024\"",
        "a quoted part is kept, a bare one quoted"
    );
}
