//! Tampering with a log: every edit an attacker with write access can make is caught,
//! and the verifier names the file and line.

mod common;

use std::fs;
use std::path::PathBuf;

use common::{TwoParty, assert_at, parse, read_lines, resign, serialize, write_lines};
use fedcrm_audit::log::{AuditConfig, Clock as _};
use fedcrm_audit::verify::{Problem, VerifyFailure, verify_paths_at};
use fedcrm_audit::{Event, line_hash};
use proptest::prelude::*;

fn config(seal_every_records: u64) -> AuditConfig {
    AuditConfig { seal_every_records, ..AuditConfig::default() }
}

fn verify(s: &TwoParty, paths: &[PathBuf]) -> Result<fedcrm_audit::verify::VerifyReport, VerifyFailure> {
    s.verify(paths)
}

/// A's log alone.
fn verify_a(s: &TwoParty) -> Result<fedcrm_audit::verify::VerifyReport, VerifyFailure> {
    verify(s, std::slice::from_ref(&s.a_dir))
}

#[test]
fn untouched_logs_verify_with_every_receipt_checked() {
    let s = TwoParty::new(4, config(4));
    let report = verify(&s, &s.both()).unwrap();
    // B holds one receipt per A message plus A's final head; A holds one per B answer.
    assert_eq!(report.receipts_checked, 5 + 4);
    assert_eq!(report.logs[0].party, "store-1.brand");
    assert_eq!(report.logs[1].party, "coordinator.brand");
    assert!(report.logs[0].seals >= 3, "{report:?}");
    assert_eq!(report.logs[0].unsealed_tail, 0);
    assert!(report.logs.iter().all(|l| l.torn_tail.is_none() && l.first_seq == 0));
}

/// Every single byte of A's log, flipped (XOR 0x01), is detected at the flipped line or
/// the next one. B's receipt of A's final head covers A's last line, which no later
/// record of A could.
#[test]
fn every_flipped_byte_is_detected_at_its_line() {
    let s = TwoParty::new(3, config(3));
    let file = s.a_file();
    let original = fs::read(&file).unwrap();
    let line_of = |offset: usize| original[..offset].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    // Work on copies, two at a time, so the test stays quick.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (s, original, file) = (&s, &original, &file);
            scope.spawn(move || {
                let copy = tempfile::tempdir().unwrap();
                let dir = copy.path().join("a");
                fs::create_dir(&dir).unwrap();
                let copied = dir.join(file.file_name().unwrap());
                for offset in (t..original.len()).step_by(threads) {
                    let mut bytes = original.clone();
                    bytes[offset] ^= 0x01;
                    fs::write(&copied, &bytes).unwrap();
                    let failure = s
                        .verify(&[dir.clone(), s.b_dir.clone()])
                        .expect_err(&format!("flipped byte {offset} (line {}) went unnoticed", line_of(offset)));
                    let line = line_of(offset);
                    assert_at(&failure, &copied, &[line, line + 1]);
                }
            });
        }
    });
}

/// Random byte changes (any value) in a rotated, multi-file log.
#[test]
fn random_byte_changes_in_rotated_logs_are_detected() {
    let s = TwoParty::new(
        12,
        AuditConfig { seal_every_records: 5, rotate_bytes: common::ROTATE_BYTES, ..AuditConfig::default() },
    );
    let files = common::files(&s.a_dir);
    assert!(files.len() >= 3, "{files:?}");
    let originals: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 48, ..ProptestConfig::default() });
    runner
        .run(&(0..files.len(), any::<prop::sample::Index>(), 1u8..=255), |(f, index, mask)| {
            let offset = index.index(originals[f].len());
            let mut bytes = originals[f].clone();
            bytes[offset] ^= mask;
            fs::write(&files[f], &bytes).unwrap();
            let result = s.verify(&s.both());
            fs::write(&files[f], &originals[f]).unwrap();
            let failure = result.expect_err("a changed byte went unnoticed");
            let line = originals[f][..offset].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            let last_line = originals[f].iter().filter(|&&b| b == b'\n').count() as u64;
            // At the changed line, or where the next record's prev no longer matches it
            // (the next line, or the first line of the next file).
            let at_next_file =
                line == last_line && f + 1 < files.len() && failure.file == files[f + 1] && failure.line == Some(1);
            let at_line = failure.file == files[f] && failure.line.is_some_and(|l| l == line || l == line + 1);
            prop_assert!(at_line || at_next_file, "changed {}:{}: {}", files[f].display(), line, failure);
            Ok(())
        })
        .unwrap();
}

#[test]
fn deleted_record_is_named() {
    let s = TwoParty::new(4, config(4));
    let file = s.a_file();
    let mut lines = read_lines(&file);
    lines.remove(3); // record 3
    write_lines(&file, &lines);
    let failure = verify_a(&s).unwrap_err();
    assert_eq!(failure.problem, Problem::Sequence);
    assert_at(&failure, &file, &[4]);
    assert_eq!(failure.seq, Some(4));
    assert!(failure.message.contains("record 3 is missing") && failure.message.contains("deleted"), "{failure}");
    let shown = failure.to_string();
    assert!(shown.starts_with(&format!("{}:4: record 4: ", file.display())), "{shown}");
}

#[test]
fn duplicated_record_is_named() {
    let s = TwoParty::new(4, config(4));
    let file = s.a_file();
    let mut lines = read_lines(&file);
    lines.insert(4, lines[3].clone());
    write_lines(&file, &lines);
    let failure = verify_a(&s).unwrap_err();
    assert_eq!(failure.problem, Problem::Sequence);
    assert_at(&failure, &file, &[5]);
    assert!(failure.message.contains("exact copy of line 4") && failure.message.contains("duplicated"), "{failure}");
}

#[test]
fn duplicated_record_further_down_is_named() {
    let s = TwoParty::new(4, config(4));
    let file = s.a_file();
    let mut lines = read_lines(&file);
    lines.insert(7, lines[2].clone());
    write_lines(&file, &lines);
    let failure = verify_a(&s).unwrap_err();
    assert_at(&failure, &file, &[8]);
    assert!(failure.message.contains("exact copy of line 3"), "{failure}");
}

#[test]
fn inserted_record_is_named() {
    let s = TwoParty::new(4, config(4));
    let file = s.a_file();
    let mut lines = read_lines(&file);
    // A forged record that claims record 3's place, with the right prev.
    let mut forged = parse(&lines[3]);
    forged.event = common::egress(999);
    lines.insert(3, serialize(&forged));
    write_lines(&file, &lines);
    let failure = verify_a(&s).unwrap_err();
    assert_eq!(failure.problem, Problem::Sequence);
    assert_at(&failure, &file, &[5]);
    assert!(failure.message.contains("inserted"), "{failure}");
}

#[test]
fn inserted_record_with_renumbered_successors_breaks_the_chain() {
    let s = TwoParty::new(4, config(4));
    let file = s.a_file();
    let mut lines = read_lines(&file);
    let mut forged = parse(&lines[3]);
    forged.event = common::egress(999);
    // Renumber everything after it; the prevs cannot be fixed without re-signing.
    for line in &mut lines[3..] {
        let mut record = parse(line);
        record.seq += 1;
        *line = serialize(&record);
    }
    lines.insert(3, serialize(&forged));
    write_lines(&file, &lines);
    let failure = verify_a(&s).unwrap_err();
    assert_eq!(failure.problem, Problem::BrokenChain);
    assert_at(&failure, &file, &[5]);
    assert!(failure.message.contains(&format!("{}:4", file.display())), "{failure}");
}

#[test]
fn reordered_records_are_named() {
    let s = TwoParty::new(4, config(4));
    let file = s.a_file();
    let mut lines = read_lines(&file);
    lines.swap(3, 4);
    write_lines(&file, &lines);
    let failure = verify_a(&s).unwrap_err();
    assert_eq!(failure.problem, Problem::Sequence);
    assert_at(&failure, &file, &[4]);
    assert!(failure.message.contains("reordered") && failure.message.contains("line 5"), "{failure}");
}

#[test]
fn edited_record_breaks_the_chain_at_the_next_line() {
    let s = TwoParty::new(4, config(4));
    let file = s.a_file();
    let mut lines = read_lines(&file);
    let mut record = parse(&lines[2]);
    record.event = common::egress(12345);
    lines[2] = serialize(&record);
    write_lines(&file, &lines);
    let failure = verify_a(&s).unwrap_err();
    assert_eq!(failure.problem, Problem::BrokenChain);
    assert_at(&failure, &file, &[4]);
}

/// Cutting whole records off the end leaves a log that verifies on its own (nothing in
/// it can show what is gone), but B's receipts show it.
#[test]
fn truncated_tail_is_caught_by_the_peers_receipts() {
    let s = TwoParty::new(4, config(4));
    let file = s.a_file();
    let lines = read_lines(&file);
    let keep = lines.len() - 4;
    write_lines(&file, &lines[..keep]);
    let alone = verify_a(&s).unwrap();
    assert_eq!(alone.logs[0].last_seq, keep as u64 - 1);

    let failure = verify(&s, &s.both()).unwrap_err();
    assert_eq!(failure.problem, Problem::Truncated);
    assert_at(&failure, &file, &[keep as u64]);
    assert_eq!(failure.seq, Some(keep as u64 - 1));
    let first_beyond = *s.receipted.iter().find(|&&q| q >= keep as u64).unwrap();
    assert!(
        failure.message.contains(&format!(
            "store-1.brand's log ends at record {}, but coordinator.brand holds its signed head for record {first_beyond}",
            keep - 1
        )),
        "{failure}"
    );
    assert!(failure.message.contains(&common::files(&s.b_dir)[0].display().to_string()), "{failure}");
}

/// Truncating mid-record leaves a torn tail, which alone looks like a crash; a receipt
/// for that record shows it had been written whole.
#[test]
fn truncation_inside_a_receipted_record_is_not_excused_as_a_crash() {
    let s = TwoParty::new(4, config(4));
    let file = s.a_file();
    let bytes = fs::read(&file).unwrap();
    fs::write(&file, &bytes[..bytes.len() - 40]).unwrap();
    let alone = verify_a(&s).unwrap();
    let torn = alone.logs[0].torn_tail.clone().unwrap();
    let failure = verify(&s, &s.both()).unwrap_err();
    assert_eq!(failure.problem, Problem::Truncated);
    assert_at(&failure, &file, &[torn.line]);
    assert!(failure.message.contains("torn"), "{failure}");
}

/// The attacker edits a record and recomputes every later hash and seal with A's own
/// key: A's log verifies alone, but B's receipts no longer match.
#[test]
fn resigned_rewrite_is_caught_by_the_peers_receipts() {
    let s = TwoParty::new(4, config(4));
    let file = s.a_file();
    // An egress record after the first receipted head.
    let edited_seq = read_lines(&file)
        .iter()
        .map(|l| parse(l))
        .find(|r| matches!(r.event, Event::Egress { .. }) && s.receipted[0] < r.seq)
        .unwrap()
        .seq;
    resign(&file, &s.a.signer(), |records| {
        let record = records.iter_mut().find(|r| r.seq == edited_seq).unwrap();
        assert!(matches!(record.event, Event::Egress { .. }), "{record:?}");
        record.event = common::egress(777);
    });
    verify_a(&s).expect("a re-signed log verifies on its own");

    let failure = verify(&s, &s.both()).unwrap_err();
    assert_eq!(failure.problem, Problem::ReceiptMismatch, "{failure}");
    let first_hit = *s.receipted.iter().find(|&&q| q >= edited_seq).unwrap();
    let bound = *s.receipted.iter().filter(|&&q| q < edited_seq).max().unwrap();
    assert_at(&failure, &file, &[first_hit + 1]);
    assert_eq!(failure.seq, Some(first_hit));
    assert!(failure.message.contains("rewritten"), "{failure}");
    assert!(failure.message.contains(&format!("after record {bound}")), "{failure}");
}

/// Without A's key, an attacker who edits a record and recomputes the chain cannot
/// re-sign: the first seal after the edit fails, even with A's log alone.
#[test]
fn rewrite_without_the_key_fails_at_the_first_seal_after_the_edit() {
    let s = TwoParty::new(4, config(4));
    let file = s.a_file();
    let records: Vec<_> = read_lines(&file).iter().map(|l| parse(l)).collect();
    let edited = records.iter().position(|r| r.seq > 4 && matches!(r.event, Event::Egress { .. })).unwrap();
    let first_seal = edited + records[edited..].iter().position(|r| matches!(r.event, Event::Seal { .. })).unwrap();
    let intruder = s.brand.node("store-1.brand"); // same name, but not A's key
    common::resign_from(&file, &intruder.signer(), edited, |records| records[edited].event = common::egress(4242));
    let failure = verify_a(&s).unwrap_err();
    assert_eq!(failure.problem, Problem::BadSignature, "{failure}");
    assert_at(&failure, &file, &[first_seal as u64 + 1]);
}

#[test]
fn forged_receipt_is_a_bad_signature() {
    let s = TwoParty::new(2, config(64));
    let file = common::files(&s.b_dir).remove(0);
    // B claims a head A never signed (B's own key cannot sign for A).
    resign(&file, &s.b.signer(), |records| {
        let record = records.iter_mut().find(|r| matches!(r.event, Event::Receipt { .. })).unwrap();
        if let Event::Receipt { peer_head, .. } = &mut record.event {
            *peer_head = hex::encode(line_hash(b"forged"));
        }
    });
    // B's log first: A's receipts of B's (rewritten) heads would fail too.
    let failure = verify(&s, &[s.b_dir.clone(), s.a_dir.clone()]).unwrap_err();
    assert_eq!(failure.problem, Problem::BadSignature, "{failure}");
    assert_eq!(failure.file, file);
    assert!(failure.message.contains("forged or altered"), "{failure}");
}

#[test]
fn cut_start_is_truncated() {
    let s = TwoParty::new(4, config(4));
    let file = s.a_file();
    let lines = read_lines(&file);
    write_lines(&file, &lines[3..]);
    let failure = verify_a(&s).unwrap_err();
    assert_eq!(failure.problem, Problem::Truncated);
    assert_at(&failure, &file, &[1]);
    assert!(failure.message.contains("starts at record 3, not 0"), "{failure}");
}

#[test]
fn removed_middle_file_is_named() {
    let s = TwoParty::new(10, AuditConfig { rotate_bytes: common::ROTATE_BYTES, ..AuditConfig::default() });
    let files = common::files(&s.a_dir);
    assert!(files.len() >= 3);
    fs::remove_file(&files[1]).unwrap();
    let failure = verify_a(&s).unwrap_err();
    assert_eq!(failure.problem, Problem::Sequence);
    assert_at(&failure, &files[2], &[1]);
    assert!(failure.message.contains("a log file may have been removed"), "{failure}");
}

#[test]
fn certificate_from_another_ca_is_uncertified() {
    let s = TwoParty::new(2, config(4));
    let other = common::Brand::new();
    let failure = verify_paths_at(std::slice::from_ref(&s.a_dir), &other.ca_der, s.clock.now_ms()).unwrap_err();
    assert_eq!(failure.problem, Problem::Uncertified);
    assert_at(&failure, &s.a_file(), &[1]);
    assert_eq!(failure.seq, Some(0));
    assert!(failure.message.contains("not issued by this brand's ca"), "{failure}");
}

#[test]
fn log_of_another_party_under_the_same_name_is_refused() {
    // A's records re-attributed to another node, re-signed with A's key: the
    // certificate still names store-1.
    let s = TwoParty::new(2, config(4));
    let file = s.a_file();
    resign(&file, &s.a.signer(), |records| {
        for r in records.iter_mut() {
            r.party = "store-2.brand".into();
        }
    });
    let failure = verify_a(&s).unwrap_err();
    assert_eq!(failure.problem, Problem::WrongParty);
    assert_at(&failure, &file, &[1]);
}

/// Claim 21: a franchisee's log-opened record rewritten (and re-signed with its own
/// key) to state the organisation unit of an HQ-owned channel, or another
/// organisation, is refused at that record, naming what the certificate says.
#[test]
fn a_log_opened_record_naming_the_wrong_organisation_unit_is_refused() {
    for (role, organisation, states) in [
        ("fedcrm-node-hq", "Test Org", r#"role "fedcrm-node-hq" and organisation "Test Org""#),
        ("fedcrm-node-franchisee", "HQ", r#"role "fedcrm-node-franchisee" and organisation "HQ""#),
    ] {
        let s = TwoParty::new(2, config(4));
        let file = s.a_file();
        resign(&file, &s.a.signer(), |records| match &mut records[0].event {
            Event::LogOpened { role: r, organisation: o, .. } => (*r, *o) = (role.into(), organisation.into()),
            other => panic!("expected log-opened, got {other:?}"),
        });
        let failure = verify_a(&s).unwrap_err();
        assert_eq!(failure.problem, Problem::WrongParty, "{failure}");
        assert_at(&failure, &file, &[1]);
        assert!(
            failure.message.contains(&format!(
                "the log-opened record states {states}, but the certificate says \"fedcrm-node-franchisee\" and \"Test Org\""
            )),
            "{failure}"
        );
    }
}

#[test]
fn stray_bytes_after_the_last_record_are_not_a_crash() {
    let s = TwoParty::new(2, config(4));
    let file = s.a_file();
    let mut bytes = fs::read(&file).unwrap();
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    // The final newline replaced: a complete record followed by a stray byte.
    *bytes.last_mut().unwrap() = b' ';
    bytes.push(b'x');
    fs::write(&file, &bytes).unwrap();
    let failure = verify_a(&s).unwrap_err();
    assert_eq!(failure.problem, Problem::Malformed);
    assert_at(&failure, &file, &[lines]);
}

#[test]
fn complete_last_line_that_does_not_parse_is_malformed() {
    let s = TwoParty::new(2, config(4));
    let file = s.a_file();
    let mut lines = read_lines(&file);
    let n = lines.len();
    let last = lines.last_mut().unwrap();
    last.truncate(last.len() / 2);
    last.push(b'\n');
    write_lines(&file, &lines);
    let failure = verify_a(&s).unwrap_err();
    assert_eq!(failure.problem, Problem::Malformed);
    assert_at(&failure, &file, &[n as u64]);
}

/// The record format tolerates unknown fields (see `record.rs`); adding one changes
/// the line's bytes, which the next record's prev catches.
#[test]
fn added_field_breaks_the_chain() {
    let s = TwoParty::new(2, config(4));
    let file = s.a_file();
    let mut lines = read_lines(&file);
    let text = String::from_utf8(lines[2].clone()).unwrap().replacen('{', "{\"extra\":1,", 1);
    lines[2] = text.into_bytes();
    write_lines(&file, &lines);
    let failure = verify_a(&s).unwrap_err();
    assert_eq!(failure.problem, Problem::BrokenChain, "{failure}");
    assert_at(&failure, &file, &[4]);
}

#[test]
fn same_party_twice_is_refused() {
    let s = TwoParty::new(1, config(4));
    let failure = verify(&s, &[s.a_dir.clone(), s.a_dir.clone()]).unwrap_err();
    assert_eq!(failure.problem, Problem::WrongParty);
}

#[test]
fn a_node_that_logs_a_different_message_than_it_sent_is_caught() {
    // The node logs egress of message X but the coordinator received message Y under
    // the same signed head: the two logs disagree about what left the node.
    let tmp = tempfile::tempdir().unwrap();
    let brand = common::Brand::new();
    let a = brand.node("store-1.brand");
    let b = brand.coordinator();
    let clock = common::TestClock::new();
    let config = fedcrm_audit::log::AuditConfig::default();
    let mut la = a.open(&tmp.path().join("a"), config, clock.clone());
    let mut lb = b.open(&tmp.path().join("b"), config, clock.clone());
    for i in 0..3u64 {
        la.append(common::egress(i)).unwrap();
        let head = la.signed_head().unwrap();
        let received = if i == 1 {
            hex::encode([9u8; 32])
        } else {
            match common::egress(i) {
                Event::Egress { sha256, .. } => sha256,
                _ => unreachable!(),
            }
        };
        let mut receipt = head.receipt();
        if let Event::Receipt { message, bytes, sha256, .. } = &mut receipt {
            *message = "masked-chunk".into();
            *bytes = 1;
            *sha256 = received;
        }
        lb.append(receipt).unwrap();
    }
    la.seal().unwrap();
    lb.seal().unwrap();
    drop((la, lb));
    let paths = vec![tmp.path().join("a"), tmp.path().join("b")];
    let err = common::verify(&paths, &brand.ca_der, &clock).unwrap_err();
    assert_eq!(err.problem, Problem::ReceiptMismatch, "{err}");
    assert!(err.message.contains("differs from what"), "{err}");
}
