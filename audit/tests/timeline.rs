//! A timeline nobody can rewrite (issue 6, attack A5): record times never go back and
//! never run ahead of the verifier's clock or of the peers' receipts; retention is at
//! least three years in any configuration and runs from the newest record deleted;
//! and a coordinator cannot show two nodes different views of a round.
//!
//! Every clock here is a [`TestClock`] starting on the last day of a month; no test
//! reads the real date.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{
    Brand, MS_PER_DAY, Party, ROTATE_BYTES, RotatingLog, TestClock, egress, files, parse, read_lines, resign, start_ms,
    verify,
};
use fedcrm_audit::log::{AuditConfig, AuditLog, Clock as _, read_records};
use fedcrm_audit::record::{ROUND_VIEW_SIGNED, ROUND_VIEW_UNMASKED};
use fedcrm_audit::verify::{Problem, VerifyFailure, VerifyOptions, VerifyReport, verify_paths_with};
use fedcrm_audit::{Event, Record, head_payload, line_hash};

fn date_of(ms: u64) -> time::Date {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).unwrap().date()
}

fn verify_at(paths: &[PathBuf], ca_der: &[u8], now_ms: u64) -> Result<VerifyReport, VerifyFailure> {
    verify_paths_with(paths, ca_der, VerifyOptions::at(now_ms))
}

/// The record a failure points at.
fn record_at(failure: &VerifyFailure) -> Record {
    parse(&read_lines(&failure.file)[failure.line.expect("a line") as usize - 1])
}

// ---------------------------------------------------------------------------
// Retention: three years in any configuration, counted from the newest record deleted
// ---------------------------------------------------------------------------

#[test]
fn retention_under_three_years_in_a_toml_config_is_refused() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct File {
        audit: AuditConfig,
    }
    let err = toml::from_str::<File>("[audit]\nretention_days = 1\n").unwrap_err().to_string();
    assert!(err.contains("retention_days is 1, but audit logs must be kept at least 1096 days"), "{err}");
    assert!(err.contains("set retention_days = 1096 or more in [audit]"), "{err}");
    let err = toml::from_str::<File>("[audit]\nretention_days = 1095\n").unwrap_err().to_string();
    assert!(err.contains("retention_days is 1095"), "{err}");
    let ok: File = toml::from_str("[audit]\nretention_days = 1096\nseal_every_records = 8\n").unwrap();
    assert_eq!((ok.audit.retention_days, ok.audit.seal_every_records), (1096, 8));
    let defaults: File = toml::from_str("[audit]\n").unwrap();
    assert_eq!(defaults.audit, AuditConfig::default());
    assert!(toml::from_str::<File>("[audit]\nretention = 1096\n").is_err(), "unknown keys are still refused");
}

/// The verifier used to compare the deletion's time with the first record kept, which
/// fails whenever that record is younger than the period — as it is when the clock
/// has just crossed into a new month (a new file). With the production period: files
/// written on 30 November 2026, deleted on 30 November 2029 (the last day of the
/// month, three years and a day later, 2028 being a leap year).
#[test]
fn a_legitimate_deletion_on_the_last_day_of_a_month_verifies() {
    let RotatingLog { tmp, brand, clock, mut log, .. } = RotatingLog::new(AuditConfig::default(), 0..0);
    assert_eq!(AuditConfig::default().retention_days, 1096);
    for i in 0..20 {
        log.append(egress(i)).unwrap();
        clock.advance_ms(1000);
    }
    let old = files(tmp.path());
    assert!(old.len() >= 3, "{old:?}");
    let newest_old = read_records(tmp.path()).unwrap().last().unwrap().time_ms;

    clock.advance_days(1096);
    clock.advance_ms(3_600_000);
    assert_eq!(date_of(clock.now_ms()), time::macros::date!(2029 - 11 - 30));
    assert!(date_of(clock.now_ms()).next_day().unwrap().day() == 1, "the last day of a month");
    log.append(egress(100)).unwrap(); // a new month: a new file, minutes old
    let deleted = log.apply_retention().unwrap();
    log.seal().unwrap();
    assert_eq!(deleted, old, "every file before the current one is past the period");

    let records = read_records(tmp.path()).unwrap();
    let (at, newest) = records
        .iter()
        .find_map(|r| match r.event {
            Event::RetentionDeleted { newest_deleted_ms, retention_days: 1096, .. } => {
                Some((r.time_ms, newest_deleted_ms))
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(newest, newest_old);
    assert!(at - records[0].time_ms < MS_PER_DAY, "the first record kept is younger than the period");
    let report = verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap();
    assert!(report.logs[0].first_seq > 0);
}

// ---------------------------------------------------------------------------
// Times within one log
// ---------------------------------------------------------------------------

/// NTP steps the clock back an hour, and the process restarts: the writer dates the
/// records that follow at the last record's time rather than before it.
#[test]
fn the_writer_never_dates_a_record_before_the_last_one() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let node = brand.node("store-1.brand");
    let clock = TestClock::new();
    let mut log = node.open(tmp.path(), AuditConfig::default(), clock.clone());
    log.append(egress(0)).unwrap();
    let last = log.head_time_ms();
    clock.set_ms(start_ms() - 3_600_000);
    let appended = log.append(egress(1)).unwrap();
    assert_eq!(appended.time_ms, last);
    drop(log);
    let mut log = node.open(tmp.path(), AuditConfig::default(), clock.clone());
    log.append(egress(2)).unwrap();
    log.seal().unwrap();
    assert_eq!(log.signed_head().unwrap().time_ms, last);
    drop(log);

    let times: Vec<u64> = read_records(tmp.path()).unwrap().iter().map(|r| r.time_ms).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(*times.last().unwrap(), last);
    // An auditor whose clock is right verifies it.
    verify(&[tmp.path().to_path_buf()], &brand.ca_der, &TestClock::at(start_ms() + 60_000)).unwrap();
}

#[test]
fn a_record_dated_before_its_predecessor_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let node = brand.node("store-1.brand");
    let clock = TestClock::new();
    let mut log = node.open(tmp.path(), AuditConfig { seal_every_records: 3, ..AuditConfig::default() }, clock.clone());
    for i in 0..6 {
        log.append(egress(i)).unwrap();
        clock.advance_ms(1000);
    }
    drop(log);
    let file = files(tmp.path()).remove(0);
    // Re-signed with the party's own key: the chain and the seals hold, the times do not.
    resign(&file, &node.signer(), |records| records[3].time_ms = records[2].time_ms - 3_600_000);
    let failure = verify(&[tmp.path().to_path_buf()], &brand.ca_der, &clock).unwrap_err();
    assert_eq!(failure.problem, Problem::TimeReversed, "{failure}");
    common::assert_at(&failure, &file, &[4]);
    assert!(failure.message.contains(&format!("{}:3", file.display())), "{failure}");
}

#[test]
fn a_record_in_the_verifiers_future_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let node = brand.node("store-1.brand");
    // The node's clock runs an hour ahead of the auditor's.
    let auditor = TestClock::new();
    let ahead = TestClock::at(start_ms() + 3_600_000);
    let mut log = node.open(tmp.path(), AuditConfig::default(), ahead.clone());
    log.append(egress(0)).unwrap();
    log.seal().unwrap();
    drop(log);
    let paths = [tmp.path().to_path_buf()];
    let failure = verify(&paths, &brand.ca_der, &auditor).unwrap_err();
    assert_eq!(failure.problem, Problem::FutureTime, "{failure}");
    assert_eq!((failure.line, failure.seq), (Some(1), Some(0)));
    assert!(failure.message.contains("later than the verifier's clock (2026-11-30T22:00:00Z) plus 300 s"), "{failure}");
    // Within the skew, or an hour later, it verifies.
    verify_at(&paths, &brand.ca_der, start_ms() + 3_600_000 - 290_000).unwrap();
    verify(&paths, &brand.ca_der, &ahead).unwrap();
}

// ---------------------------------------------------------------------------
// A5: the node rewrites its timeline
// ---------------------------------------------------------------------------

/// A node and the coordinator, each on its own clock, exchanging messages: every node
/// message carries the node's signed head, which the coordinator logs as a receipt;
/// every answer carries the coordinator's, which the node logs.
struct Timeline {
    _tmp: tempfile::TempDir,
    brand: Brand,
    node: Party,
    node_dir: PathBuf,
    coord_dir: PathBuf,
    node_clock: Arc<TestClock>,
    coord_clock: Arc<TestClock>,
    node_log: AuditLog,
    coord_log: AuditLog,
    sent: u64,
}

impl Timeline {
    /// Messages, one a second, until the node's log has `n` files of 4 KiB.
    fn with_node_files(n: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let brand = Brand::new();
        let node = brand.node("store-1.brand");
        let coord = brand.coordinator();
        let (node_dir, coord_dir) = (tmp.path().join("node"), tmp.path().join("coordinator"));
        let (node_clock, coord_clock) = (TestClock::new(), TestClock::new());
        let config = AuditConfig { rotate_bytes: ROTATE_BYTES, ..AuditConfig::default() };
        let node_log = node.open(&node_dir, config, node_clock.clone());
        let coord_log = coord.open(&coord_dir, AuditConfig::default(), coord_clock.clone());
        let mut t = Timeline {
            _tmp: tmp,
            brand,
            node,
            node_dir,
            coord_dir,
            node_clock,
            coord_clock,
            node_log,
            coord_log,
            sent: 0,
        };
        while files(&t.node_dir).len() < n {
            t.exchange();
        }
        t
    }

    fn exchange(&mut self) {
        self.node_log.append(egress(self.sent)).unwrap();
        let head = self.node_log.signed_head().unwrap();
        head.verify(&self.node.cert_der).unwrap();
        self.coord_log.append(head.receipt()).unwrap();
        let answer = self.coord_log.signed_head().unwrap();
        self.node_log.append(answer.receipt()).unwrap();
        self.sent += 1;
        self.node_clock.advance_ms(1000);
        self.coord_clock.advance_ms(1000);
    }

    fn both(&self) -> Vec<PathBuf> {
        vec![self.node_dir.clone(), self.coord_dir.clone()]
    }

    fn node_only(&self) -> Vec<PathBuf> {
        vec![self.node_dir.clone()]
    }

    /// The attack as it was run: the node's clock set 1,096 days ahead, the writer's
    /// own retention deletes 17 of the 18 files (all but the current one, minutes
    /// old), and the node seals the deletion with its own key. Returns the file the
    /// forged records start in.
    fn forge_retention(&mut self) -> PathBuf {
        assert_eq!(files(&self.node_dir).len(), 18);
        self.node_clock.advance_days(1096);
        let deleted = self.node_log.apply_retention().unwrap();
        self.node_log.seal().unwrap();
        assert_eq!(deleted.len(), 17);
        let left = files(&self.node_dir);
        assert_eq!(left.len(), 2, "the current file and the deletion's new one: {left:?}");
        left[1].clone()
    }
}

/// Verified today, the deletion is in the future of the auditor's clock.
#[test]
fn a5_forged_retention_alone_is_in_the_verifiers_future() {
    let mut t = Timeline::with_node_files(18);
    let forged = t.forge_retention();
    let today = t.coord_clock.now_ms();
    let failure = verify_at(&t.node_only(), &t.brand.ca_der, today).unwrap_err();
    assert_eq!(failure.problem, Problem::FutureTime, "{failure}");
    assert_eq!(failure.file, forged);
    // The first record dated in the forged future: the file's log-opened, or the deletion.
    assert!(matches!(failure.line, Some(1 | 2)), "{failure}");
    assert!(record_at(&failure).time_ms >= today + 1096 * MS_PER_DAY, "{failure}");
    assert!(failure.message.contains("2029-11-30"), "{failure}");
    assert!(failure.message.contains("timeline was moved forward"), "{failure}");
}

/// With the coordinator's log. Today the forged records are in the future; an auditor
/// who comes after the forged date finds a node log that is consistent on its own,
/// but the coordinator logged receiving the node's later heads 1,096 days before
/// the node dated them.
#[test]
fn a5_forged_retention_is_caught_by_the_coordinators_receipts() {
    let mut t = Timeline::with_node_files(18);
    let forged = t.forge_retention();
    let failure = verify_at(&t.both(), &t.brand.ca_der, t.coord_clock.now_ms()).unwrap_err();
    assert_eq!(failure.problem, Problem::FutureTime, "{failure}");
    assert_eq!(failure.file, forged);

    // The node goes on working, its clock still ahead.
    for _ in 0..3 {
        t.exchange();
    }
    t.node_log.seal().unwrap();
    t.coord_log.seal().unwrap();
    let later = t.node_clock.now_ms() + MS_PER_DAY;
    verify_at(&t.node_only(), &t.brand.ca_der, later).expect("alone, the forged timeline is consistent");
    let failure = verify_at(&t.both(), &t.brand.ca_der, later).unwrap_err();
    assert_eq!(failure.problem, Problem::AheadOfPeer, "{failure}");
    assert_eq!(failure.file, forged);
    assert!(record_at(&failure).time_ms > t.coord_clock.now_ms() + 1095 * MS_PER_DAY, "{failure}");
    assert!(
        failure.message.contains("coordinator.brand logged receiving store-1.brand's signed head for it"),
        "{failure}"
    );
    assert!(failure.message.contains("store-1.brand's clock ran ahead of coordinator.brand's"), "{failure}");

    // The coordinator's log alone shows it too: the receipts carry the node's time.
    let failure = verify_at(std::slice::from_ref(&t.coord_dir), &t.brand.ca_der, later).unwrap_err();
    assert_eq!(failure.problem, Problem::AheadOfPeer, "{failure}");
    assert!(failure.file.starts_with(&t.coord_dir), "{failure}");
    assert_eq!(record_at(&failure).event.kind(), "receipt");
}

/// The attacker's own writer goes on dating records by the real clock after the
/// forged deletion: the log's times go backwards.
#[test]
fn a5_forged_retention_then_writing_at_normal_time_goes_backwards() {
    let mut t = Timeline::with_node_files(18);
    let file = t.forge_retention();
    let now = t.coord_clock.now_ms();
    let signer = t.node.signer();
    resign(&file, &signer, |records| {
        let last = records.last().unwrap().clone();
        for i in 0..3u64 {
            records.push(Record {
                seq: last.seq + 1 + i,
                prev: String::new(), // recomputed
                time_ms: now + i * 1000,
                party: last.party.clone(),
                event: egress(500 + i),
            });
        }
        records.push(Record {
            seq: last.seq + 4,
            prev: String::new(),
            time_ms: now + 3000,
            party: last.party.clone(),
            event: Event::Seal { upto_seq: 0, head: String::new(), signature_hex: String::new() }, // re-signed
        });
    });
    let failure = verify_at(&t.node_only(), &t.brand.ca_der, now).unwrap_err();
    assert_eq!(failure.problem, Problem::FutureTime, "{failure}");
    // After the forged date, the step back is what shows.
    let later = t.node_clock.now_ms() + MS_PER_DAY;
    let failure = verify_at(&t.both(), &t.brand.ca_der, later).unwrap_err();
    assert_eq!(failure.problem, Problem::TimeReversed, "{failure}");
    assert_eq!(failure.file, file);
    let lines = read_lines(&file);
    let first_normal = lines.iter().position(|l| parse(l).time_ms < now + 1000 * MS_PER_DAY).unwrap();
    common::assert_at(&failure, &file, &[first_normal as u64 + 1]);
    assert!(failure.message.contains(&format!("{}:{}", file.display(), first_normal)), "{failure}");
}

/// The other lie: the deletion dated honestly, but claiming the deleted records were
/// three years old. The node's log is consistent on its own; the coordinator's
/// receipts carry the deleted records' real (signed) times.
#[test]
fn a5_deletion_that_understates_the_age_of_what_it_deleted_is_caught_by_the_coordinators_receipts() {
    let mut t = Timeline::with_node_files(18);
    let old = files(&t.node_dir);
    let doomed = &old[..17];
    let last_line = read_lines(&doomed[16]).pop().unwrap();
    let last = parse(&last_line);
    t.node_log
        .append(Event::RetentionDeleted {
            files: doomed.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect(),
            upto_seq: last.seq,
            last_head: hex::encode(line_hash(&last_line[..last_line.len() - 1])),
            retention_days: 1096,
            newest_deleted_ms: start_ms() - 1100 * MS_PER_DAY,
        })
        .unwrap();
    t.node_log.seal().unwrap();
    for f in doomed {
        fs::remove_file(f).unwrap();
    }
    let now = t.coord_clock.now_ms();
    verify_at(&t.node_only(), &t.brand.ca_der, now).expect("alone, the deletion looks three years late");
    let failure = verify_at(&t.both(), &t.brand.ca_der, now).unwrap_err();
    assert_eq!(failure.problem, Problem::Truncated, "{failure}");
    assert_eq!(record_at(&failure).event.kind(), "retention-deleted", "{failure}");
    assert!(failure.message.contains("coordinator.brand holds store-1.brand's signed head for record"), "{failure}");
    assert!(failure.message.contains("misstates the age of what it deleted"), "{failure}");
    assert!(failure.message.contains("deleted before their retention period ended"), "{failure}");
}

/// A party that signs a head with another time than its record's is caught too.
#[test]
fn a_signed_head_whose_time_is_not_the_records_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let (node, coord) = (brand.node("store-1.brand"), brand.coordinator());
    let clock = TestClock::new();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut la = node.open(&a, AuditConfig::default(), clock.clone());
    let mut lb = coord.open(&b, AuditConfig::default(), clock.clone());
    la.append(egress(0)).unwrap();
    let mut head = la.signed_head().unwrap();
    head.time_ms -= 3_600_000;
    head.signature = node.signer().sign(&head_payload(&head.party, head.seq, head.time_ms, &head.head)).unwrap();
    head.verify(&node.cert_der).unwrap();
    lb.append(head.receipt()).unwrap();
    la.seal().unwrap();
    lb.seal().unwrap();
    let failure = verify(&[a.clone(), b], &brand.ca_der, &clock).unwrap_err();
    assert_eq!(failure.problem, Problem::ReceiptMismatch, "{failure}");
    assert!(failure.file.starts_with(&a), "{failure}");
    assert_eq!(failure.seq, Some(head.seq));
    assert!(failure.message.contains("misstated its own time"), "{failure}");
}

// ---------------------------------------------------------------------------
// Split view of a round
// ---------------------------------------------------------------------------

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn two_nodes(tmp: &Path, brand: &Brand, clock: &Arc<TestClock>) -> (PathBuf, AuditLog, PathBuf, AuditLog) {
    let (a, b) = (tmp.join("store-1"), tmp.join("store-2"));
    let la = brand.node("store-1.brand").open(&a, AuditConfig::default(), clock.clone());
    let lb = brand.node("store-2.brand").open(&b, AuditConfig::default(), clock.clone());
    (a, la, b, lb)
}

/// The coordinator tells store-1 that all three nodes survived, and store-2 that
/// store-1 dropped (so store-2 reveals store-1's self-mask shares): each log is
/// consistent on its own, and the two together show the split.
#[test]
fn a_coordinator_that_shows_nodes_different_views_of_a_round_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let clock = TestClock::new();
    let (a, mut la, b, mut lb) = two_nodes(tmp.path(), &brand, &clock);
    let u2 = names(&["store-1.brand", "store-2.brand", "store-3.brand"]);
    la.append(egress(0)).unwrap();
    let seen_by_a = la.append(Event::round_view("r-1", ROUND_VIEW_SIGNED, u2.clone(), u2.clone(), [])).unwrap();
    lb.append(Event::round_view("r-1", ROUND_VIEW_SIGNED, u2.clone(), names(&["store-2.brand", "store-3.brand"]), []))
        .unwrap();
    la.seal().unwrap();
    lb.seal().unwrap();
    verify(std::slice::from_ref(&a), &brand.ca_der, &clock).unwrap();
    verify(std::slice::from_ref(&b), &brand.ca_der, &clock).unwrap();

    let failure = verify(&[a.clone(), b.clone()], &brand.ca_der, &clock).unwrap_err();
    assert_eq!(failure.problem, Problem::SplitView, "{failure}");
    assert!(failure.file.starts_with(&b), "{failure}");
    assert_eq!(record_at(&failure).event.kind(), "round-view");
    let a_file = files(&a).remove(0);
    let a_line = seen_by_a.seq + 1;
    assert!(failure.message.contains(&format!("{}:{a_line}", a_file.display())), "{failure}");
    assert!(failure.message.contains("U3 = [store-2.brand, store-3.brand]"), "{failure}");
    assert!(failure.message.contains("U3 = [store-1.brand, store-2.brand, store-3.brand]"), "{failure}");
    assert!(failure.message.contains("round r-1"), "{failure}");
}

/// The same (U2, U3) at both stages in every log verifies, in whatever order the
/// names were written; other rounds are independent.
#[test]
fn the_same_view_of_a_round_in_every_log_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let brand = Brand::new();
    let clock = TestClock::new();
    let (a, mut la, b, mut lb) = two_nodes(tmp.path(), &brand, &clock);
    let u2 = names(&["store-1.brand", "store-2.brand", "store-3.brand"]);
    let u3 = names(&["store-1.brand", "store-2.brand"]);
    la.append(Event::round_view("r-1", ROUND_VIEW_SIGNED, u2.clone(), u3.clone(), [])).unwrap();
    la.append(Event::round_view("r-1", ROUND_VIEW_UNMASKED, u2.clone(), u3.clone(), u3.clone())).unwrap();
    lb.append(Event::RoundView {
        round: "r-1".into(),
        stage: ROUND_VIEW_UNMASKED.into(),
        delivered: u2.iter().rev().cloned().collect(),
        survivors: u3.iter().rev().cloned().collect(),
        signers: u3.clone(),
    })
    .unwrap();
    lb.append(Event::round_view("r-2", ROUND_VIEW_SIGNED, u3.clone(), u3.clone(), [])).unwrap();
    la.seal().unwrap();
    lb.seal().unwrap();
    verify(&[a, b], &brand.ca_der, &clock).unwrap();
}
