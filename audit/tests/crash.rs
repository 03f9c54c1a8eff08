//! A process killed mid-write leaves a torn last record: reported as a crash, not as
//! tampering, and set aside (and logged) when the log is next opened.

mod common;

use std::fs;

use common::{Brand, TestClock, read_lines, verify};
use fedcrm_audit::log::{AuditConfig, read_records};
use fedcrm_audit::{Event, line_hash};

fn policy(i: u64) -> Event {
    // Non-ASCII text and escapes, so cuts land inside multi-byte characters and escapes.
    Event::PolicyDecision {
        round: Some(format!("r-{i}")),
        analysis: "segments \"rfm\" \\ v2".into(),
        admitted: false,
        reason: "Zürich café: cohort < 10 — refusé ✓".into(),
    }
}

/// Every possible cut of the last record (from one byte to all of it but the newline)
/// verifies up to the record before and reports the torn tail with its file and line.
#[test]
fn every_cut_of_the_last_record_is_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let node = brand.node("store-9.brand");
    let clock = TestClock::new();
    let mut log = node.open(tmp.path(), AuditConfig::default(), clock.clone());
    for i in 0..3 {
        log.append(policy(i)).unwrap();
    }
    drop(log);
    let file = common::files(tmp.path()).remove(0);
    let whole = fs::read(&file).unwrap();
    let lines = read_lines(&file);
    let last_len = lines.last().unwrap().len(); // with its newline
    let keep = whole.len() - last_len;
    for cut in 1..last_len {
        fs::write(&file, &whole[..keep + cut]).unwrap();
        let report = verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock)
            .unwrap_or_else(|f| panic!("cut after {cut} bytes of the last record: {f}"));
        let log = &report.logs[0];
        let torn = log.torn_tail.as_ref().expect("torn tail reported");
        assert_eq!((torn.file.as_path(), torn.line, torn.bytes), (file.as_path(), lines.len() as u64, cut as u64));
        assert_eq!(log.last_seq, lines.len() as u64 - 2);
    }
}

#[test]
fn torn_tail_is_recovered_on_open_and_the_log_verifies_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let node = brand.node("store-9.brand");
    let clock = TestClock::new();
    let mut log = node.open(tmp.path(), AuditConfig::default(), clock.clone());
    for i in 0..5 {
        log.append(policy(i)).unwrap();
    }
    let (last_seq, last_head) = log.head();
    drop(log);

    // The process dies halfway through writing the next record.
    let file = common::files(tmp.path()).remove(0);
    let next = read_lines(&file).last().unwrap().clone();
    let torn = &next[..next.len() / 2];
    let mut bytes = fs::read(&file).unwrap();
    let before = bytes.len() as u64;
    bytes.extend_from_slice(torn);
    fs::write(&file, &bytes).unwrap();

    let report = verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
    let tail = report.logs[0].torn_tail.clone().unwrap();
    assert_eq!((tail.line, tail.bytes), (last_seq + 2, torn.len() as u64));
    assert_eq!(report.logs[0].last_seq, last_seq);
    // read_records skips it too.
    assert_eq!(read_records(tmp.path()).unwrap().len() as u64, last_seq + 1);

    let mut log = node.open(tmp.path(), AuditConfig::default(), clock.clone());
    log.append(policy(9)).unwrap();
    log.seal().unwrap();
    drop(log);
    let records = read_records(tmp.path()).unwrap();
    let recovered = &records[last_seq as usize + 1];
    assert_eq!(recovered.prev, hex::encode(last_head), "the chain continues from the last complete record");
    assert_eq!(
        recovered.event,
        Event::TornTailRecovered {
            file: "audit-000001.log".into(),
            bytes: torn.len() as u64,
            sha256: hex::encode(line_hash(torn)),
        }
    );
    assert!(matches!(records[last_seq as usize + 2].event, Event::LogOpened { .. }));
    assert!(fs::metadata(&file).unwrap().len() > before);
    let report = verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
    assert!(report.logs[0].torn_tail.is_none());
    assert_eq!(report.logs[0].unsealed_tail, 0);
}

/// A power loss can leave zero bytes where the last block was not written.
#[test]
fn zero_filled_tail_is_a_crash_and_is_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let node = brand.node("store-9.brand");
    let clock = TestClock::new();
    let mut log = node.open(tmp.path(), AuditConfig::default(), clock.clone());
    log.append(policy(1)).unwrap();
    drop(log);
    let file = common::files(tmp.path()).remove(0);
    let mut bytes = fs::read(&file).unwrap();
    bytes.extend_from_slice(&[0u8; 512]);
    fs::write(&file, &bytes).unwrap();
    let report = verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
    assert_eq!(report.logs[0].torn_tail.as_ref().unwrap().bytes, 512);

    drop(node.open(tmp.path(), AuditConfig::default(), clock.clone()));
    let report = verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
    assert!(report.logs[0].torn_tail.is_none());
    assert!(
        read_records(tmp.path())
            .unwrap()
            .iter()
            .any(|r| matches!(r.event, Event::TornTailRecovered { bytes: 512, .. }))
    );
}

/// Killed between records: nothing is torn; the records after the last seal are
/// reported as an unsealed tail, not refused.
#[test]
fn killed_between_records_verifies_with_an_unsealed_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let node = brand.node("store-9.brand");
    let clock = TestClock::new();
    let mut log = node.open(tmp.path(), AuditConfig::default(), clock.clone());
    log.append(policy(0)).unwrap();
    log.seal().unwrap();
    for i in 1..4 {
        log.append(policy(i)).unwrap();
    }
    drop(log); // no seal: as if killed
    let report = verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
    assert_eq!(report.logs[0].unsealed_tail, 3);
    assert_eq!(report.logs[0].seals, 1);
    assert!(report.logs[0].torn_tail.is_none());
}
