//! The writer: chain continuity across appends, seals, restarts, rotation and
//! retention; refusals; no key in `Debug`.

mod common;

use std::fs;

use common::{
    Brand, MS_PER_DAY, ROTATE_BYTES, RotatingLog, TestClock, egress, files, read_lines, verify, verify_short_retention,
};
use fedcrm_audit::log::{AuditConfig, AuditError, AuditLog, SignedHead, read_records};
use fedcrm_audit::verify::Problem;
use fedcrm_audit::{Event, GENESIS, head_payload, line_hash};

#[test]
fn append_seal_reopen_continues_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let node = brand.node("store-1.brand");
    let clock = TestClock::new();
    let mut log = node.open(tmp.path(), AuditConfig::default(), clock.clone());
    assert_eq!(log.head().0, 0, "log-opened is record 0");
    let mut appended = Vec::new();
    for i in 0..3 {
        appended.push(log.append(egress(i)).unwrap());
    }
    log.seal().unwrap();
    log.seal().unwrap(); // a seal right after a seal adds nothing
    let (seq, head) = log.head();
    drop(log);

    let mut log = node.open(tmp.path(), AuditConfig::default(), clock.clone());
    assert_eq!(log.head().0, seq + 1);
    log.append(egress(3)).unwrap();
    drop(log);

    let file = files(tmp.path()).remove(0);
    let lines = read_lines(&file);
    let records = read_records(tmp.path()).unwrap();
    assert_eq!(records.len(), 7);
    assert_eq!(records[0].prev, GENESIS);
    assert!(
        matches!(&records[0].event, Event::LogOpened { certificate_der_hex, .. } if *certificate_der_hex == hex::encode(&node.cert_der))
    );
    for (i, a) in appended.iter().enumerate() {
        assert_eq!(a.seq, i as u64 + 1);
        let line = &lines[i + 1];
        assert_eq!(a.head, line_hash(&line[..line.len() - 1]));
    }
    // The seal signs record 3's head with the party's key.
    match &records[4].event {
        Event::Seal { upto_seq, head: seal_head, signature_hex } => {
            assert_eq!(*upto_seq, 3);
            assert_eq!(*seal_head, hex::encode(appended[2].head));
            let signature = hex::decode(signature_hex).unwrap();
            fedcrm_pki::verify_signature(
                &node.cert_der,
                &head_payload("store-1.brand", 3, records[3].time_ms, &appended[2].head),
                &signature,
            )
            .unwrap();
        }
        other => panic!("expected a seal, got {other:?}"),
    }
    // The restart continues the chain from the seal.
    assert_eq!(records[5].seq, seq + 1);
    assert_eq!(records[5].prev, hex::encode(head));
    assert!(matches!(records[5].event, Event::LogOpened { .. }));
    assert!(records.iter().all(|r| r.party == "store-1.brand"));

    let report = verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
    let summary = &report.logs[0];
    assert_eq!((summary.records, summary.first_seq, summary.last_seq, summary.seals), (7, 0, 6, 1));
    assert_eq!(summary.unsealed_tail, 2);
    assert_eq!(summary.files, 1);
    // A single file can be verified too.
    verify(&[file], &brand.ca_der, &clock).unwrap();
}

#[test]
fn seals_every_n_records_and_every_t_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let node = brand.node("store-1.brand");
    let clock = TestClock::new();
    let config = AuditConfig { seal_every_records: 3, seal_every_seconds: 10, ..AuditConfig::default() };
    let mut log = node.open(tmp.path(), config, clock.clone());
    for i in 0..10 {
        log.append(egress(i)).unwrap();
    }
    let records = read_records(tmp.path()).unwrap();
    let mut run = 0;
    for r in &records {
        if matches!(r.event, Event::Seal { .. }) {
            assert_eq!(run, 3, "a seal after every 3 records");
            run = 0;
        } else {
            run += 1;
        }
    }

    let slow = tempfile::tempdir().unwrap();
    let config = AuditConfig { seal_every_records: 1000, seal_every_seconds: 10, ..AuditConfig::default() };
    let mut log = node.open(slow.path(), config, clock.clone());
    log.append(egress(0)).unwrap();
    clock.advance_ms(9_000);
    log.append(egress(1)).unwrap();
    assert!(!read_records(slow.path()).unwrap().iter().any(|r| matches!(r.event, Event::Seal { .. })));
    clock.advance_ms(1_000);
    let appended = log.append(egress(2)).unwrap();
    let records = read_records(slow.path()).unwrap();
    assert!(matches!(records.last().unwrap().event, Event::Seal { upto_seq, .. } if upto_seq == appended.seq));
    verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
    verify(&[slow.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
}

#[test]
fn rotation_continues_the_chain_across_files() {
    let RotatingLog { tmp, brand, clock, mut log, .. } =
        RotatingLog::new(AuditConfig { seal_every_records: 4, ..AuditConfig::default() }, 0..40);
    log.seal().unwrap();
    drop(log);
    let files = files(tmp.path());
    assert!(files.len() >= 4, "{files:?}");
    for (i, file) in files.iter().enumerate() {
        assert_eq!(file.file_name().unwrap().to_str().unwrap(), format!("audit-{:06}.log", i + 1));
        assert!(fs::metadata(file).unwrap().len() <= ROTATE_BYTES);
        // Each file names the certificate first, so it verifies alone after retention.
        let first = common::parse(&read_lines(file)[0]);
        assert!(matches!(first.event, Event::LogOpened { .. }), "{file:?}");
    }
    let records = read_records(tmp.path()).unwrap();
    assert!(records.iter().enumerate().all(|(i, r)| r.seq == i as u64));
    let report = verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
    assert_eq!(report.logs[0].files, files.len());
    assert_eq!(report.logs[0].records, records.len() as u64);
    assert_eq!(report.logs[0].unsealed_tail, 0);
}

/// With a 1-day period (the `test-util` hook) and the clock on the last day of a month:
/// the kept files start in the next month, younger than the period, which is fine —
/// the period runs from the newest record deleted.
#[test]
fn retention_deletes_old_files_logs_it_and_the_rest_verifies() {
    let RotatingLog { tmp, brand, clock, mut log, .. } =
        RotatingLog::short_retention(AuditConfig { retention_days: 1, ..AuditConfig::default() }, 0..20);
    // Nothing is old enough yet.
    assert!(log.apply_retention().unwrap().is_empty());
    clock.advance_days(2);
    for i in 100..120 {
        log.append(egress(i)).unwrap();
    }
    let before = files(tmp.path());
    let saved: Vec<Vec<u8>> = before.iter().map(|f| fs::read(f).unwrap()).collect();
    let deleted = log.apply_retention().unwrap();
    log.seal().unwrap();
    let current = files(tmp.path()).last().unwrap().clone();
    assert!(!deleted.is_empty());
    assert!(!deleted.contains(&current), "the current file is never deleted");
    assert_eq!(deleted, before[..deleted.len()]);
    assert!(deleted.iter().all(|f| !f.exists()));

    let records = read_records(tmp.path()).unwrap();
    let deleted_records: Vec<fedcrm_audit::Record> = saved[..deleted.len()]
        .iter()
        .flat_map(|bytes| bytes.split(|&b| b == b'\n'))
        .filter(|l| !l.is_empty())
        .map(common::parse)
        .collect();
    let (upto_seq, last_head, at) = records
        .iter()
        .find_map(|r| match &r.event {
            Event::RetentionDeleted { files, upto_seq, last_head, retention_days, newest_deleted_ms } => {
                assert_eq!(*retention_days, 1);
                assert_eq!(files.len(), deleted.len());
                // The newest record deleted, by its own time.
                assert_eq!(*newest_deleted_ms, deleted_records.last().unwrap().time_ms);
                assert_eq!(deleted_records.last().unwrap().seq, *upto_seq);
                assert!(r.time_ms - newest_deleted_ms >= MS_PER_DAY);
                Some((*upto_seq, last_head.clone(), r.time_ms))
            }
            _ => None,
        })
        .expect("the deletion is logged");
    assert_eq!(records[0].seq, upto_seq + 1);
    assert_eq!(records[0].prev, last_head);
    // The first record kept is younger than the period (it is in December, the
    // deletion on 2 December): the check the verifier used to make, and failed on.
    assert!(at - records[0].time_ms < MS_PER_DAY, "{} {}", at, records[0].time_ms);
    let report = verify_short_retention(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
    assert_eq!(report.logs[0].first_seq, upto_seq + 1);
    // The default verifier holds every log to three years.
    let failure = verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap_err();
    assert_eq!(failure.problem, Problem::Truncated, "{failure}");
    assert!(
        failure.message.contains("retention period of 1 days, but audit logs must be kept at least 1096 days"),
        "{failure}"
    );

    // A deletion interrupted midway (the last named file still there) also verifies.
    let last_deleted = deleted.len() - 1;
    fs::write(&before[last_deleted], &saved[last_deleted]).unwrap();
    verify_short_retention(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
    fs::remove_file(&before[last_deleted]).unwrap();

    // Deleting the oldest remaining file by hand is not retention.
    let oldest = files(tmp.path()).remove(0);
    assert_ne!(oldest, current);
    fs::remove_file(&oldest).unwrap();
    let failure = verify_short_retention(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap_err();
    assert_eq!(failure.problem, Problem::Truncated, "{failure}");
    assert_eq!(failure.line, Some(1));
}

#[test]
fn one_process_per_log_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let node = brand.node("store-1.brand");
    let clock = TestClock::new();
    let mut first = node.open(tmp.path(), AuditConfig::default(), clock.clone());
    first.append(egress(1)).unwrap();
    // A second writer (another process, or a copied config) is refused, naming the holder.
    let second =
        AuditLog::open(tmp.path(), &node.name, node.identity(), node.signer(), AuditConfig::default(), clock.clone());
    match second {
        Err(AuditError::InUse { holder, .. }) => {
            assert_eq!(holder, Some(format!("pid {}", std::process::id())))
        }
        other => panic!("a second writer was not refused: {:?}", other.map(|_| ())),
    }
    // Once the first is closed, the log opens again and verifies.
    drop(first);
    let mut again = node.open(tmp.path(), AuditConfig::default(), clock.clone());
    again.append(egress(2)).unwrap();
    again.seal().unwrap();
    drop(again);
    verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
}

#[test]
fn refusals_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let a = brand.node("store-1.brand");
    let b = brand.node("store-2.brand");
    let clock = TestClock::new();
    drop(a.open(tmp.path(), AuditConfig::default(), clock.clone()));

    // Another party's directory.
    let err = AuditLog::open(tmp.path(), &b.name, b.identity(), b.signer(), AuditConfig::default(), clock.clone())
        .unwrap_err();
    assert!(matches!(err, AuditError::PartyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("holds the audit log of store-1.brand, not of store-2.brand"), "{err}");

    // Retention under three years, through the shipped opener; 0 even through the test hook.
    let other = tempfile::tempdir().unwrap();
    for days in [0, 1, 1095] {
        let config = AuditConfig { retention_days: days, ..AuditConfig::default() };
        let err = AuditLog::open(other.path(), &a.name, a.identity(), a.signer(), config, clock.clone()).unwrap_err();
        assert!(matches!(err, AuditError::Config(_)), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("retention_days is {days}, but audit logs must be kept at least 1096 days")),
            "{err}"
        );
    }
    let config = AuditConfig { retention_days: 0, ..AuditConfig::default() };
    let err =
        AuditLog::open_with_short_retention(other.path(), &a.name, a.identity(), a.signer(), config, clock.clone())
            .unwrap_err();
    assert!(err.to_string().contains("retention_days is 0"), "{err}");
    let config = AuditConfig { rotate_bytes: 100, ..AuditConfig::default() };
    assert!(AuditLog::open(other.path(), &a.name, a.identity(), a.signer(), config, clock.clone()).is_err());

    // A key the certificate does not certify, and a certificate of another party.
    let err = AuditLog::open(other.path(), &a.name, a.identity(), b.signer(), AuditConfig::default(), clock.clone())
        .unwrap_err();
    assert!(matches!(err, AuditError::Identity(_)), "{err}");
    let err = AuditLog::open(other.path(), &a.name, b.identity(), b.signer(), AuditConfig::default(), clock.clone())
        .unwrap_err();
    assert!(err.to_string().contains("the certificate is store-2.brand's"), "{err}");
    assert!(files(other.path()).is_empty(), "nothing written when refused");
}

#[test]
fn debug_never_shows_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let node = brand.node("store-1.brand");
    let log = node.open(tmp.path(), AuditConfig::default(), TestClock::new());
    let printed = format!("{log:?}");
    assert!(printed.contains("store-1.brand") && printed.contains("seq: Some(0)"), "{printed}");
    assert!(printed.contains(&tmp.path().display().to_string()), "{printed}");
    let pem = node.key.as_str();
    assert!(!printed.contains("SigningKey") && !printed.contains("PRIVATE") && !printed.contains(&pem[40..80]));
    let head = log.signed_head().unwrap();
    assert!(!format!("{head:?}").contains("PRIVATE"));
}

#[test]
fn signed_heads_verify_only_with_the_partys_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let a = brand.node("store-1.brand");
    let b = brand.node("store-2.brand");
    let mut log = a.open(tmp.path(), AuditConfig::default(), TestClock::new());
    log.append(egress(0)).unwrap();
    let head = log.signed_head().unwrap();
    assert_eq!((head.seq, head.head), log.head());
    head.verify(&a.cert_der).unwrap();
    assert!(matches!(head.verify(&b.cert_der), Err(AuditError::BadHead { .. })));
    let later = SignedHead { seq: head.seq + 1, ..head.clone() };
    assert!(later.verify(&a.cert_der).is_err());
    // The head's time is the record's, and signed.
    assert_eq!(head.time_ms, read_records(tmp.path()).unwrap().last().unwrap().time_ms);
    assert_eq!(head.time_ms, log.head_time_ms());
    let retimed = SignedHead { time_ms: head.time_ms + 1, ..head.clone() };
    assert!(retimed.verify(&a.cert_der).is_err());
    let other = SignedHead { party: "store-2.brand".into(), ..head.clone() };
    assert!(other.verify(&b.cert_der).is_err());
    assert_eq!(
        head.receipt(),
        Event::Receipt {
            peer: "store-1.brand".into(),
            peer_seq: head.seq,
            peer_head: hex::encode(head.head),
            peer_time_ms: head.time_ms,
            signature_hex: hex::encode(&head.signature),
            message: String::new(),
            bytes: 0,
            sha256: String::new(),
        }
    );
}

#[test]
fn config_defaults_and_unknown_keys() {
    let config: AuditConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(config, AuditConfig::default());
    assert_eq!(
        (config.seal_every_records, config.seal_every_seconds, config.rotate_bytes, config.retention_days),
        (64, 10, 64 * 1024 * 1024, 1096)
    );
    assert!(serde_json::from_str::<AuditConfig>(r#"{"retention": 5}"#).is_err());
}

#[test]
fn the_log_can_be_shared_between_tasks() {
    fn shareable<T: Send + Sync>() {}
    shareable::<AuditLog>();
    shareable::<SignedHead>();
}

#[test]
fn a_new_month_starts_a_new_file_and_the_chain_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let node = brand.node("store-1.brand");
    let clock = TestClock::new();
    let mut log = node.open(tmp.path(), AuditConfig::default(), clock.clone());
    log.append(egress(0)).unwrap();
    // The clock starts on 30 November; a day later it is December.
    clock.advance_days(1);
    log.append(egress(1)).unwrap();
    log.seal().unwrap();
    drop(log);
    assert_eq!(files(tmp.path()).len(), 2);
    let report = verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
    assert_eq!(report.logs[0].files, 2);
    // Reopened later in December, the log goes on in the December file (the month
    // comes from the records, not from the file's modification time).
    clock.advance_days(3);
    let mut log = node.open(tmp.path(), AuditConfig::default(), clock.clone());
    log.append(egress(2)).unwrap();
    drop(log);
    assert_eq!(files(tmp.path()).len(), 2);
}

#[test]
fn a_deletion_before_the_retention_period_or_unsealed_is_caught() {
    // The party claims 1 day of retention, but deletes files that are minutes old.
    let RotatingLog { tmp, brand, clock, mut log, .. } =
        RotatingLog::short_retention(AuditConfig { retention_days: 1, ..AuditConfig::default() }, 0..40);
    let files_now = files(tmp.path());
    assert!(files_now.len() >= 3);
    let (upto_seq, last_head, newest_deleted_ms) = {
        let records = read_records(&files_now[0]).unwrap();
        let last = records.last().unwrap();
        let line = fs::read_to_string(&files_now[0]).unwrap();
        let last_line = line.lines().last().unwrap().to_string();
        (last.seq, hex::encode(fedcrm_audit::line_hash(last_line.as_bytes())), last.time_ms)
    };
    log.append(Event::RetentionDeleted {
        files: vec!["audit-000001.log".into()],
        upto_seq,
        last_head,
        retention_days: 1,
        newest_deleted_ms,
    })
    .unwrap();
    log.seal().unwrap();
    drop(log);
    fs::remove_file(&files_now[0]).unwrap();
    let err = verify_short_retention(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap_err();
    assert_eq!(err.problem, Problem::Truncated, "{err}");
    assert!(err.message.contains("before their retention period ended"), "{err}");
    // It names the deletion itself.
    let named = common::parse(&read_lines(&err.file)[err.line.unwrap() as usize - 1]);
    assert_eq!(named.event.kind(), "retention-deleted", "{err}");
}
