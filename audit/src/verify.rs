//! The auditor's verifier (`fedcrm audit verify PATH... --ca BRAND_CA`).
//!
//! For each log given (a party's directory or a single file) it checks, line by line in
//! file order: every complete line is a [`Record`]; the party never changes; sequence
//! numbers are consecutive across files (naming a gap as a deleted record, a repeat as
//! a duplicate or insertion, a step back as a reordering); every `prev` is the SHA-256
//! of the line before; the log starts at record 0, or later only where a
//! [`Event::RetentionDeleted`] in the same log accounts for the missing start; every
//! [`Event::LogOpened`] certificate chains to the brand CA at the record's time and
//! names the party; every [`Event::Seal`] signs the head just before it with the
//! certificate in force; record times never go back, and none is later than the
//! verifier's clock plus [`DEFAULT_CLOCK_SKEW_MS`]; a retention deletion is sealed,
//! states at least [`MIN_RETENTION_DAYS`] and was recorded at least that long after the
//! newest record it deleted. Then, between the logs given, every [`Event::Receipt`]
//! about another given party must match that party's record (head and time) and verify
//! with its certificate, which is what exposes a truncated tail or a log rewritten and
//! re-signed with its own key; and no party's record is dated later than a peer logged
//! receiving its signed head (plus the skew), which is what exposes a timeline moved
//! forward to make records look old enough to delete. Last, no two logs hold different
//! views (U2, U3) of the same round ([`Event::RoundView`]).
//!
//! A last line without its newline at the end of the newest file is what a crash
//! mid-write leaves; if it is a prefix of a record it is reported as a
//! [`TornTail`], not as tampering. Records after the last seal are counted, not
//! refused (a crash can come at any time); they are protected by the peers' receipts.
//!
//! The verifier fails on the first problem in file order and names the file, the
//! 1-based line and the record. It never modifies a log. Seal signatures (ECDSA, the
//! costliest check per record) are verified on a second thread beside the walk.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Instant;

use fedcrm_protocol::pki::{self, Usage};
use serde::Serialize;

use crate::log::{
    AuditConfig, AuditError, AuditLog, Clock as _, LogIdentity, MIN_RETENTION_DAYS, SystemClock, files_of, io_error,
    is_crash_tail, lines, list_files,
};
use crate::record::{Event, GENESIS, Record};
use crate::{head_payload, line_hash};

/// What verification found, when every check passed.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// One summary per path given, in order.
    pub logs: Vec<LogSummary>,
    /// Cross-party receipts checked against the peer's log.
    pub receipts_checked: u64,
}

/// One verified log.
#[derive(Debug, Clone, Serialize)]
pub struct LogSummary {
    /// The party whose log it is.
    pub party: String,
    /// The path given.
    pub path: PathBuf,
    /// Log files read.
    pub files: usize,
    /// Complete records.
    pub records: u64,
    /// Sequence number of the first record (above 0 after retention deleted older files).
    pub first_seq: u64,
    /// Sequence number of the last complete record.
    pub last_seq: u64,
    /// Seals checked.
    pub seals: u64,
    /// Records after the last seal (all records if there is none).
    pub unsealed_tail: u64,
    /// A crash-torn last record, if the log ends with one.
    pub torn_tail: Option<TornTail>,
}

/// A crash-torn last record: the newest file ends with part of a line (no newline).
/// Reported, not a failure: the writer sets it aside when it next opens the log.
#[derive(Debug, Clone, Serialize)]
pub struct TornTail {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line the torn record starts.
    pub line: u64,
    /// Its length in bytes.
    pub bytes: u64,
}

/// The first problem found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyFailure {
    /// The file the problem is in.
    pub file: PathBuf,
    /// The 1-based line, when the problem has one.
    pub line: Option<u64>,
    /// The record's sequence number, when known.
    pub seq: Option<u64>,
    /// What kind of problem.
    pub problem: Problem,
    /// What was found and what was expected.
    pub message: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(seq) = self.seq {
            write!(f, ": record {seq}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for VerifyFailure {}

/// Kinds of verification failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Problem {
    /// A complete line is not a record (edited, or stray bytes).
    Malformed,
    /// A `prev` does not match the line before (a record edited or inserted).
    BrokenChain,
    /// Sequence numbers not consecutive (a record deleted, duplicated or reordered).
    Sequence,
    /// A seal or receipt signature does not verify, or a seal does not match the head before it.
    BadSignature,
    /// A log-opened certificate does not chain to the brand CA at that time, or is missing.
    Uncertified,
    /// A record or certificate names another party.
    WrongParty,
    /// A peer holds a signed head that this log's record does not match (rewritten).
    ReceiptMismatch,
    /// The log lost records at its start or end (or a retention deletion came before
    /// its period ended).
    Truncated,
    /// A record is dated earlier than the record before it in the same log.
    TimeReversed,
    /// A record is dated later than the verifier's clock plus the allowed skew.
    FutureTime,
    /// A party's record is dated later than a peer logged receiving its signed head,
    /// plus the allowed skew: its clock ran ahead, or its timeline was moved forward.
    AheadOfPeer,
    /// Two records hold different views (U2, U3) of the same round: the coordinator
    /// showed nodes different sets of participants.
    SplitView,
    /// A file could not be read.
    Unreadable,
}

fn fail(file: &Path, line: Option<u64>, seq: Option<u64>, problem: Problem, message: String) -> VerifyFailure {
    VerifyFailure { file: file.to_path_buf(), line, seq, problem, message }
}

/// How far a record's time may run ahead of the verifier's clock, or of the time a
/// peer logged receiving its signed head: five minutes, as for certificates
/// (`pki::CLOCK_SKEW_ALLOWANCE`). Parties whose clocks differ by more fail verification.
pub const DEFAULT_CLOCK_SKEW_MS: u64 = 300_000;

/// The verifier's clock and limits. [`VerifyOptions::at`] gives the defaults for a
/// given "now"; [`verify_paths`] uses them with the system clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The verifier's "now" (ms since the Unix epoch): no record may be dated later
    /// than this plus `skew_ms`.
    pub now_ms: u64,
    /// Allowed clock difference (default [`DEFAULT_CLOCK_SKEW_MS`]).
    pub skew_ms: u64,
    /// Shortest retention period a deletion may state (default
    /// [`MIN_RETENTION_DAYS`], what every configuration must keep; tests of the
    /// writer's short-retention hook lower it).
    pub min_retention_days: u32,
}

impl VerifyOptions {
    /// The defaults, with `now_ms` as the verifier's clock.
    pub fn at(now_ms: u64) -> Self {
        VerifyOptions { now_ms, skew_ms: DEFAULT_CLOCK_SKEW_MS, min_retention_days: MIN_RETENTION_DAYS }
    }
}

/// Verifies one or more logs against the brand CA (`ca_der`) with the system clock as
/// "now" ([`verify_paths_with`] and [`VerifyOptions::at`]). Each path is a party's
/// log directory (all `audit-*.log` files in it, in order) or a single log file. With
/// several parties' logs, every receipt in one log about a party whose log is also
/// given is checked against that log: the peer's record `peer_seq` must exist with head
/// `peer_head` and time `peer_time_ms`, the receipt's signature must verify with the
/// peer's certificate, and the record must not be dated later than the receipt plus the
/// skew.
pub fn verify_paths(paths: &[PathBuf], ca_der: &[u8]) -> Result<VerifyReport, VerifyFailure> {
    verify_paths_with(paths, ca_der, VerifyOptions::at(SystemClock.now_ms()))
}

/// [`verify_paths`] with the given clock (`now_ms`, ms since the Unix epoch) and the
/// default skew and retention minimum.
pub fn verify_paths_at(paths: &[PathBuf], ca_der: &[u8], now_ms: u64) -> Result<VerifyReport, VerifyFailure> {
    verify_paths_with(paths, ca_der, VerifyOptions::at(now_ms))
}

/// [`verify_paths`] with every option given.
pub fn verify_paths_with(
    paths: &[PathBuf],
    ca_der: &[u8],
    options: VerifyOptions,
) -> Result<VerifyReport, VerifyFailure> {
    if paths.is_empty() {
        return Err(fail(Path::new(""), None, None, Problem::Unreadable, "no audit log given".into()));
    }
    let logs = paths.iter().map(|p| verify_log(p, ca_der, options)).collect::<Result<Vec<_>, _>>()?;
    let receipts_checked = check_receipts(&logs, options.skew_ms)?;
    check_round_views(&logs)?;
    Ok(VerifyReport { logs: logs.into_iter().map(|l| l.summary).collect(), receipts_checked })
}

// ---------------------------------------------------------------------------
// One log
// ---------------------------------------------------------------------------

/// A file's records: `first_seq..first_seq + records` on lines `1..=records`.
struct Span {
    file: PathBuf,
    first_seq: u64,
    records: u64,
}

/// A receipt waiting for the cross-party check.
struct PendingReceipt {
    file: PathBuf,
    line: u64,
    seq: u64,
    /// When the holder logged it.
    time_ms: u64,
    peer: String,
    peer_seq: u64,
    peer_head: String,
    peer_time_ms: u64,
    signature_hex: String,
    /// SHA-256 of the message the head came with, when the holder recorded it.
    sha256: String,
}

/// A log that passed its own checks, with what the cross-party checks need.
struct Verified {
    summary: LogSummary,
    spans: Vec<Span>,
    /// Head after each record, indexed by `seq - first_seq`.
    hashes: Vec<[u8; 32]>,
    /// (seq of the log-opened record, certificate DER), in order.
    certs: Vec<(u64, Arc<[u8]>)>,
    receipts: Vec<PendingReceipt>,
    /// What each record is, for the receipt's message check, indexed like `hashes`.
    kinds: Vec<RecordKind>,
    /// Each record's time, indexed like `hashes`.
    times: Vec<u64>,
    /// The retention deletion that accounts for the log's missing start, if any.
    retention: Option<Retention>,
    /// The round views in the log, in order.
    round_views: Vec<PendingView>,
}

/// A [`Event::RoundView`] waiting for the check across logs.
struct PendingView {
    file: PathBuf,
    line: u64,
    seq: u64,
    round: String,
    stage: String,
    delivered: Vec<String>,
    survivors: Vec<String>,
}

/// Just enough of a record to check a receipt's message hash against it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RecordKind {
    /// An egress record and the SHA-256 it names (all zeros if not valid hex).
    Egress([u8; 32]),
    Seal,
    Other,
}

impl Verified {
    /// File and line of a record known to be in the log.
    fn position(&self, seq: u64) -> (PathBuf, u64) {
        for span in &self.spans {
            if seq >= span.first_seq && seq < span.first_seq + span.records {
                return (span.file.clone(), seq - span.first_seq + 1);
            }
        }
        (self.summary.path.clone(), 0)
    }

    /// The certificate in force at record `seq`.
    fn cert_at(&self, seq: u64) -> Option<&[u8]> {
        let i = self.certs.partition_point(|(s, _)| *s <= seq);
        self.certs.get(i.saturating_sub(1)).map(|(_, c)| &c[..])
    }
}

/// A retention-deleted record found ahead of the main pass.
#[derive(Clone)]
struct Retention {
    file: PathBuf,
    line: u64,
    seq: u64,
    upto_seq: u64,
    last_head: String,
    /// When the deletion was recorded, the retention period it claims, and the time
    /// of the newest record it deleted.
    time_ms: u64,
    retention_days: u32,
    newest_deleted_ms: u64,
    /// A later seal covers the retention record itself.
    sealed: bool,
}

/// The walk through one log.
struct Walk<'a> {
    ca_der: &'a [u8],
    options: VerifyOptions,
    files: &'a [PathBuf],
    party: Option<String>,
    /// Sequence number the next record must have (None before the first).
    expected: Option<u64>,
    prev_hash: [u8; 32],
    /// File index and line of the previous record.
    prev_at: Option<(usize, u64)>,
    /// Time of the previous record.
    prev_time: Option<u64>,
    /// The current certificate and where it was stated.
    cert: Option<(Arc<[u8]>, usize, u64)>,
    /// Seal signatures, checked on a second thread while this one walks on.
    seal_jobs: SyncSender<SealJob>,
    seals: u64,
    last_seal: Option<u64>,
    records: u64,
    /// A record whose head (and time) a retention-deleted record states, when a
    /// deletion was interrupted and the record is still there.
    head_check: Option<Retention>,
    out: Verified,
}

fn verify_log(path: &Path, ca_der: &[u8], options: VerifyOptions) -> Result<Verified, VerifyFailure> {
    let files = files_of(path).map_err(|e| fail(path, None, None, Problem::Unreadable, e.to_string()))?;
    if files.is_empty() {
        return Err(fail(
            path,
            None,
            None,
            Problem::Unreadable,
            "no audit-*.log files here; give a party's audit directory or one of its log files".into(),
        ));
    }
    // ECDSA verification of the seals (one per 64 records by default) costs more than
    // hashing those 64 lines, so it runs beside the walk. Seals are checked in order
    // and only seals the walk has passed are sent, so a bad seal is always earlier
    // than (or at) any problem the walk stops at, and wins.
    std::thread::scope(|scope| {
        let (seal_jobs, queue) = sync_channel::<SealJob>(1024);
        let checker = scope.spawn(move || queue.into_iter().find_map(SealJob::check));
        let walk = Walk {
            ca_der,
            options,
            files: &files,
            party: None,
            expected: None,
            prev_hash: [0; 32],
            prev_at: None,
            prev_time: None,
            cert: None,
            seal_jobs,
            seals: 0,
            last_seal: None,
            records: 0,
            head_check: None,
            out: Verified {
                summary: LogSummary {
                    party: String::new(),
                    path: path.to_path_buf(),
                    files: files.len(),
                    records: 0,
                    first_seq: 0,
                    last_seq: 0,
                    seals: 0,
                    unsealed_tail: 0,
                    torn_tail: None,
                },
                spans: Vec::with_capacity(files.len()),
                hashes: Vec::new(),
                certs: Vec::new(),
                receipts: Vec::new(),
                kinds: Vec::new(),
                times: Vec::new(),
                retention: None,
                round_views: Vec::new(),
            },
        };
        // `run` consumes the walk, and with it the job sender, whatever the outcome, so
        // the checker drains the queue and stops.
        let walked = walk.run(path);
        let bad_seal = checker.join().unwrap_or_else(|_| {
            Some(fail(
                path,
                None,
                None,
                Problem::Unreadable,
                "the seal checker failed; this is a bug, report it".into(),
            ))
        });
        match bad_seal {
            Some(failure) => Err(failure),
            None => walked,
        }
    })
}

/// One seal signature to check, with the failure to report if it does not verify.
struct SealJob {
    cert: Arc<[u8]>,
    payload: Vec<u8>,
    signature: Vec<u8>,
    file: PathBuf,
    line: u64,
    seq: u64,
    /// Where the certificate was stated.
    cert_at: String,
}

impl SealJob {
    fn check(self) -> Option<VerifyFailure> {
        pki::verify_signature(&self.cert, &self.payload, &self.signature).err().map(|_| {
            fail(
                &self.file,
                Some(self.line),
                Some(self.seq),
                Problem::BadSignature,
                format!(
                    "the seal's signature does not verify with the certificate of the log-opened record at {}: the seal or the records before it were altered",
                    self.cert_at
                ),
            )
        })
    }
}

impl Walk<'_> {
    fn run(mut self, path: &Path) -> Result<Verified, VerifyFailure> {
        self.files()?;
        self.finish(path)
    }

    /// Walks every line of every file, in order.
    fn files(&mut self) -> Result<(), VerifyFailure> {
        let files = self.files;
        for (fi, file) in files.iter().enumerate() {
            let bytes = fs::read(file).map_err(|e| fail(file, None, None, Problem::Unreadable, format!("{e}")))?;
            let newest = fi + 1 == files.len();
            self.out.spans.push(Span { file: file.clone(), first_seq: self.expected.unwrap_or(0), records: 0 });
            let mut pos = 0;
            for (n, (line, complete)) in lines(&bytes).enumerate() {
                let line_no = n as u64 + 1;
                if !complete {
                    if newest && is_crash_tail(line) {
                        self.out.summary.torn_tail =
                            Some(TornTail { file: file.clone(), line: line_no, bytes: line.len() as u64 });
                        break;
                    }
                    let why = if newest {
                        "the last line has no newline, yet it is not the start of a record (a crash leaves only a prefix of a record line): it was altered"
                    } else {
                        "the file ends without a newline, but only the newest file may end with a torn record: it was altered"
                    };
                    return Err(fail(file, Some(line_no), None, Problem::Malformed, why.into()));
                }
                self.record(fi, line_no, line, &bytes, pos)?;
                pos += line.len() + 1;
            }
        }
        Ok(())
    }

    fn record(&mut self, fi: usize, line_no: u64, line: &[u8], bytes: &[u8], pos: usize) -> Result<(), VerifyFailure> {
        let files = self.files;
        let file = &files[fi];
        let rec: Record = serde_json::from_slice(line).map_err(|e| {
            fail(
                file,
                Some(line_no),
                None,
                Problem::Malformed,
                format!("the line is not an audit record ({e}); a complete line that does not parse was altered"),
            )
        })?;
        let at = |problem, message| fail(file, Some(line_no), Some(rec.seq), problem, message);

        match &self.party {
            None => self.party = Some(rec.party.clone()),
            Some(party) if *party != rec.party => {
                return Err(at(
                    Problem::WrongParty,
                    format!(
                        "the record names party {:?}, but this log is {party}'s (as its first record says)",
                        rec.party
                    ),
                ));
            }
            Some(_) => {}
        }

        let mut prev_hex = [0u8; 64];
        // Unwrap safety: 32 bytes always encode into 64 hex digits.
        hex::encode_to_slice(self.prev_hash, &mut prev_hex).unwrap();
        match self.expected {
            None if rec.seq == 0 => {
                if rec.prev != GENESIS {
                    return Err(at(
                        Problem::BrokenChain,
                        format!(
                            "the log's first record has prev {}, but record 0 must have the genesis value (64 zeros)",
                            rec.prev
                        ),
                    ));
                }
            }
            None => self.check_late_start(fi, line_no, &rec)?,
            Some(expected) if rec.seq != expected => {
                return Err(self.sequence_failure(fi, line_no, &rec, expected, line, bytes, pos));
            }
            Some(_) => {
                if rec.prev.as_bytes() != prev_hex {
                    let (pfi, pline) = self.prev_at.unwrap_or((fi, line_no));
                    return Err(at(
                        Problem::BrokenChain,
                        format!(
                            "prev is {}, but the line before ({}:{pline}) hashes to {}: that line or this record's prev was altered, or a record was inserted between them",
                            rec.prev,
                            self.files[pfi].display(),
                            // Unwrap safety: hex digits are ASCII.
                            std::str::from_utf8(&prev_hex).unwrap(),
                        ),
                    ));
                }
            }
        }
        self.check_time(fi, line_no, &rec)?;

        match &rec.event {
            Event::LogOpened { certificate_der_hex, role, organisation, .. } => {
                let der = hex::decode(certificate_der_hex).map_err(|e| {
                    at(Problem::Uncertified, format!("the log-opened certificate is not valid hex ({e})"))
                })?;
                let identity = if rec.party == crate::CA_PARTY && der.as_slice() == self.ca_der {
                    // The brand CA's own log, signed with the CA key itself.
                    Ok(pki::Identity {
                        name: crate::CA_PARTY.into(),
                        organisation: String::new(),
                        role: pki::Role::Analyst,
                    })
                } else {
                    pki::verify_cert(self.ca_der, &der, rec.time_ms / 1000, Usage::Client)
                };
                let identity = identity.map_err(|e| {
                    at(
                        Problem::Uncertified,
                        format!(
                            "the log-opened certificate is not certified by the brand ca at the record's time ({}): {e}",
                            when(rec.time_ms)
                        ),
                    )
                })?;
                if identity.name != rec.party {
                    return Err(at(
                        Problem::WrongParty,
                        format!("the log-opened certificate is {}'s, but this log is {}'s", identity.name, rec.party),
                    ));
                }
                // The role and organisation the log states (and the report shows) must
                // be the certificate's own.
                let is_ca = rec.party == crate::CA_PARTY;
                if !is_ca && (role != identity.role.as_str() || *organisation != identity.organisation) {
                    return Err(at(
                        Problem::WrongParty,
                        format!(
                            "the log-opened record states role {role:?} and organisation {organisation:?}, but the certificate says {:?} and {:?}",
                            identity.role.as_str(),
                            identity.organisation
                        ),
                    ));
                }
                let der: Arc<[u8]> = der.into();
                self.out.certs.push((rec.seq, der.clone()));
                self.cert = Some((der, fi, line_no));
            }
            Event::Seal { upto_seq, head, signature_hex } => {
                let Some((cert, cfi, cline)) = &self.cert else {
                    return Err(at(
                        Problem::Uncertified,
                        "a seal comes before any log-opened record in this log, so no certificate says whose key signed it".into(),
                    ));
                };
                if rec.seq == 0 || *upto_seq != rec.seq - 1 {
                    return Err(at(
                        Problem::BadSignature,
                        format!(
                            "the seal covers record {upto_seq}, but the record before it is {}",
                            rec.seq.wrapping_sub(1)
                        ),
                    ));
                }
                if head.as_bytes() != prev_hex {
                    return Err(at(
                        Problem::BadSignature,
                        format!(
                            "the seal signs head {head}, but the line before hashes to {}",
                            // Unwrap safety: hex digits are ASCII.
                            std::str::from_utf8(&prev_hex).unwrap()
                        ),
                    ));
                }
                let signature = hex::decode(signature_hex)
                    .map_err(|e| at(Problem::BadSignature, format!("the seal's signature is not valid hex ({e})")))?;
                let job = SealJob {
                    cert: cert.clone(),
                    payload: head_payload(&rec.party, *upto_seq, self.prev_time.unwrap_or(0), &self.prev_hash),
                    signature,
                    file: file.clone(),
                    line: line_no,
                    seq: rec.seq,
                    cert_at: format!("{}:{cline}", self.files[*cfi].display()),
                };
                // A closed queue means the checker already found a bad seal, which it reports.
                let _ = self.seal_jobs.send(job);
                self.seals += 1;
                self.last_seal = Some(rec.seq);
            }
            Event::Receipt { peer, peer_seq, peer_head, peer_time_ms, signature_hex, sha256, .. } => {
                self.out.receipts.push(PendingReceipt {
                    file: file.clone(),
                    line: line_no,
                    seq: rec.seq,
                    time_ms: rec.time_ms,
                    peer: peer.clone(),
                    peer_seq: *peer_seq,
                    peer_head: peer_head.clone(),
                    peer_time_ms: *peer_time_ms,
                    signature_hex: signature_hex.clone(),
                    sha256: sha256.clone(),
                });
            }
            Event::RoundView { round, stage, delivered, survivors, .. } => {
                let sorted = |names: &[String]| {
                    let mut names = names.to_vec();
                    names.sort();
                    names.dedup();
                    names
                };
                self.out.round_views.push(PendingView {
                    file: file.clone(),
                    line: line_no,
                    seq: rec.seq,
                    round: round.clone(),
                    stage: stage.clone(),
                    delivered: sorted(delivered),
                    survivors: sorted(survivors),
                });
            }

            _ => {}
        }

        let hash = line_hash(line);
        if let Some(r) = &self.head_check
            && r.upto_seq == rec.seq
        {
            if hex::encode(hash) != r.last_head {
                return Err(at(
                    Problem::BrokenChain,
                    format!(
                        "this record hashes to {}, but the retention-deleted record at {}:{} says its head is {}",
                        hex::encode(hash),
                        r.file.display(),
                        r.line,
                        r.last_head
                    ),
                ));
            }
            if rec.time_ms != r.newest_deleted_ms {
                return Err(at(
                    Problem::Truncated,
                    format!(
                        "this record (the last one the retention-deleted record at {}:{} deletes) is dated {}, but that record says the newest record it deleted was written {}: the deletion misstates the age of what it deleted",
                        r.file.display(),
                        r.line,
                        when(rec.time_ms),
                        when(r.newest_deleted_ms)
                    ),
                ));
            }
            self.head_check = None;
        }
        if self.expected.is_none() {
            self.out.summary.first_seq = rec.seq;
            // The first record may sit in a later file than the first (empty files before it).
            if let Some(span) = self.out.spans.last_mut() {
                span.first_seq = rec.seq;
            }
        }
        if let Some(span) = self.out.spans.last_mut() {
            span.records += 1;
        }
        self.out.hashes.push(hash);
        self.out.kinds.push(match &rec.event {
            Event::Egress { sha256, .. } => {
                let mut h = [0u8; 32];
                let _ = hex::decode_to_slice(sha256, &mut h);
                RecordKind::Egress(h)
            }
            Event::Seal { .. } => RecordKind::Seal,
            _ => RecordKind::Other,
        });
        self.out.times.push(rec.time_ms);
        self.prev_hash = hash;
        self.prev_at = Some((fi, line_no));
        self.prev_time = Some(rec.time_ms);
        self.expected = Some(rec.seq + 1);
        self.records += 1;
        Ok(())
    }

    /// Record times never go back within a log, and none is in the verifier's future.
    fn check_time(&self, fi: usize, line_no: u64, rec: &Record) -> Result<(), VerifyFailure> {
        let file = &self.files[fi];
        if let (Some(prev_time), Some((pfi, pline))) = (self.prev_time, self.prev_at)
            && rec.time_ms < prev_time
        {
            return Err(fail(
                file,
                Some(line_no),
                Some(rec.seq),
                Problem::TimeReversed,
                format!(
                    "this record is dated {}, earlier than the record before it ({}:{pline}, dated {}): the writer never dates a record before its predecessor, so the log's timeline was edited",
                    when(rec.time_ms),
                    self.files[pfi].display(),
                    when(prev_time)
                ),
            ));
        }
        let VerifyOptions { now_ms, skew_ms, .. } = self.options;
        if rec.time_ms > now_ms.saturating_add(skew_ms) {
            return Err(fail(
                file,
                Some(line_no),
                Some(rec.seq),
                Problem::FutureTime,
                format!(
                    "this record is dated {}, later than the verifier's clock ({}) plus {} s: {}'s clock ran ahead, or its timeline was moved forward (for instance to make records look old enough to delete)",
                    when(rec.time_ms),
                    when(now_ms),
                    skew_ms / 1000,
                    rec.party
                ),
            ));
        }
        Ok(())
    }

    /// The log's first record is not record 0: only retention may explain that.
    fn check_late_start(&mut self, fi: usize, line_no: u64, rec: &Record) -> Result<(), VerifyFailure> {
        let files = self.files;
        let file = &files[fi];
        let retentions = find_retentions(self.files);
        for r in &retentions {
            if r.upto_seq + 1 == rec.seq {
                self.check_retention(r)?;
                // The first record kept was written after the newest one deleted.
                if rec.time_ms < r.newest_deleted_ms {
                    return Err(fail(
                        file,
                        Some(line_no),
                        Some(rec.seq),
                        Problem::TimeReversed,
                        format!(
                            "the log starts here with a record dated {}, but the retention-deleted record at {}:{} says the newest record it deleted (record {}) was written later, {}",
                            when(rec.time_ms),
                            r.file.display(),
                            r.line,
                            r.upto_seq,
                            when(r.newest_deleted_ms)
                        ),
                    ));
                }
                if r.last_head == rec.prev {
                    self.out.retention = Some(r.clone());
                    return Ok(());
                }
                return Err(fail(
                    file,
                    Some(line_no),
                    Some(rec.seq),
                    Problem::BrokenChain,
                    format!(
                        "the log starts here with prev {}, but the retention-deleted record at {}:{} says the last deleted record (record {}) had head {}",
                        rec.prev,
                        r.file.display(),
                        r.line,
                        r.upto_seq,
                        r.last_head
                    ),
                ));
            }
        }
        // A deletion interrupted midway: fewer files gone than the record names. The
        // chain must then reach the last named record with the stated head and time.
        if let Some(r) = retentions.iter().find(|r| r.upto_seq >= rec.seq) {
            self.check_retention(r)?;
            self.out.retention = Some(r.clone());
            self.head_check = Some(r.clone());
            return Ok(());
        }
        Err(fail(
            file,
            Some(line_no),
            Some(rec.seq),
            Problem::Truncated,
            format!(
                "the log starts at record {}, not 0, and no retention-deleted record in it accounts for records 0..={}: the start of the log was cut off",
                rec.seq,
                rec.seq - 1
            ),
        ))
    }

    /// A deletion counts only if the party signed it, it states at least the minimum
    /// period, and it was recorded at least that period after the newest record it
    /// deleted. (Its own time is checked where it stands: never before its
    /// predecessor, never in the verifier's future; and against peers' receipts.)
    fn check_retention(&self, r: &Retention) -> Result<(), VerifyFailure> {
        let at = |message: String| fail(&r.file, Some(r.line), Some(r.seq), Problem::Truncated, message);
        if !r.sealed {
            return Err(at(
                "the retention-deleted record that accounts for the missing start of this log is not covered by any seal: anyone able to write the log could have added it".into(),
            ));
        }
        let min = self.options.min_retention_days;
        if r.retention_days < min {
            return Err(at(format!(
                "the deletion states a retention period of {} days, but audit logs must be kept at least {min} days: records were deleted before their retention period ended",
                r.retention_days
            )));
        }
        if r.newest_deleted_ms == 0 {
            return Err(at(
                "the retention-deleted record does not state when the newest record it deleted was written (newest_deleted_ms), so its retention period cannot be checked".into(),
            ));
        }
        let period_ms = u64::from(r.retention_days) * 86_400_000;
        if r.time_ms.saturating_sub(r.newest_deleted_ms) < period_ms {
            return Err(at(format!(
                "records 0..={} were deleted on {}, but the newest of them was written on {}, less than the stated retention of {} days earlier: records were deleted before their retention period ended",
                r.upto_seq,
                when(r.time_ms),
                when(r.newest_deleted_ms),
                r.retention_days
            )));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn sequence_failure(
        &self,
        fi: usize,
        line_no: u64,
        rec: &Record,
        expected: u64,
        line: &[u8],
        bytes: &[u8],
        pos: usize,
    ) -> VerifyFailure {
        let file = &self.files[fi];
        let found = rec.seq;
        let last = expected - 1;
        let message = if found > expected {
            // Is the missing record further down this file (reordered)?
            let rest = &bytes[(pos + line.len() + 1).min(bytes.len())..];
            let later = lines(rest)
                .enumerate()
                .find(|(_, (l, _))| serde_json::from_slice::<Record>(l).is_ok_and(|r| r.seq == expected));
            if let Some((k, _)) = later {
                format!(
                    "record {found} comes right after record {last}, and record {expected} follows later (line {}): records were reordered",
                    line_no + 1 + k as u64
                )
            } else {
                let missing = if found == expected + 1 {
                    format!("record {expected} is missing")
                } else {
                    format!("records {expected}..={} are missing", found - 1)
                };
                let file_gap = match (self.prev_at, line_no) {
                    (Some((pfi, _)), 1) if pfi + 1 != fi || !consecutive_files(&self.files[pfi], file) => {
                        format!(
                            " (the file before this one is {}; a log file may have been removed)",
                            self.files[pfi].display()
                        )
                    }
                    _ => String::new(),
                };
                format!(
                    "{missing}: this is record {found}, but the one before is record {last}{file_gap}; records were deleted"
                )
            }
        } else {
            // A step back: a copy of an earlier line, an inserted record, or a reordering.
            let before = &bytes[..pos];
            let copy = lines(before).enumerate().find(|(_, (l, _))| *l == line);
            if let Some((k, _)) = copy {
                format!("record {found} again: this line is an exact copy of line {}; a record was duplicated", k + 1)
            } else if found == last {
                format!(
                    "record {found} again, after a different record {found} on the line before: a record was inserted before this one"
                )
            } else {
                format!(
                    "record {found} comes after record {last}: the sequence goes back, so records were reordered or one was copied here"
                )
            }
        };
        fail(file, Some(line_no), Some(found), Problem::Sequence, message)
    }

    fn finish(mut self, path: &Path) -> Result<Verified, VerifyFailure> {
        let newest = self.files.last().map_or(path, |f| f.as_path());
        let Some(party) = self.party.take() else {
            return Err(fail(
                newest,
                None,
                None,
                Problem::Unreadable,
                "the log holds no complete record; there is nothing to verify".into(),
            ));
        };
        if self.out.certs.is_empty() {
            let first = self.out.spans.iter().find(|s| s.records > 0).map_or(newest, |s| s.file.as_path());
            return Err(fail(
                first,
                Some(1),
                Some(self.out.summary.first_seq),
                Problem::Uncertified,
                "the log has no log-opened record, so no certificate says who wrote it".into(),
            ));
        }
        let last_seq = self.expected.unwrap_or(1) - 1;
        let summary = &mut self.out.summary;
        summary.party = party;
        summary.records = self.records;
        summary.last_seq = last_seq;
        summary.seals = self.seals;
        summary.unsealed_tail = match self.last_seal {
            Some(s) => last_seq - s,
            None => self.records,
        };
        Ok(self.out)
    }
}

/// Whether `b` is the log file numbered right after `a`.
fn consecutive_files(a: &Path, b: &Path) -> bool {
    let number = |p: &Path| p.file_name().and_then(|n| n.to_str()).and_then(crate::log::file_number);
    matches!((number(a), number(b)), (Some(x), Some(y)) if x + 1 == y)
}

/// Every retention-deleted record in the log's files (not yet verified: the main pass
/// checks them where they stand).
fn find_retentions(files: &[PathBuf]) -> Vec<Retention> {
    // Cheap pre-filter: only lines naming the event are parsed.
    const NEEDLE: &[u8] = b"\"retention-deleted\"";
    let mut found = Vec::new();
    for file in files {
        let Ok(bytes) = fs::read(file) else { continue };
        for (n, (line, _)) in lines(&bytes).enumerate() {
            if !line.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
                continue;
            }
            if let Ok(Record {
                seq,
                time_ms,
                event: Event::RetentionDeleted { upto_seq, last_head, retention_days, newest_deleted_ms, .. },
                ..
            }) = serde_json::from_slice(line)
            {
                found.push(Retention {
                    file: file.clone(),
                    line: n as u64 + 1,
                    seq,
                    upto_seq,
                    last_head,
                    time_ms,
                    retention_days,
                    newest_deleted_ms,
                    sealed: seal_covers(files, seq),
                });
            }
        }
    }
    found
}

/// Does a seal in these files sign a head at or after record `seq`?
fn seal_covers(files: &[PathBuf], seq: u64) -> bool {
    const NEEDLE: &[u8] = b"\"seal\"";
    files.iter().any(|file| {
        let Ok(bytes) = fs::read(file) else { return false };
        lines(&bytes).any(|(line, _)| {
            line.windows(NEEDLE.len()).any(|w| w == NEEDLE)
                && matches!(serde_json::from_slice(line), Ok(Record { event: Event::Seal { upto_seq, .. }, .. }) if upto_seq >= seq)
        })
    })
}

/// A record time for messages: RFC 3339 UTC.
fn when(time_ms: u64) -> String {
    i64::try_from(time_ms / 1000)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{time_ms} ms"))
}

// ---------------------------------------------------------------------------
// Between logs
// ---------------------------------------------------------------------------

/// How one receipt came out.
enum Outcome {
    /// The peer's record matches.
    Matched,
    /// The failure, or the data to phrase it once every receipt is known.
    Failed(VerifyFailure),
    Truncated {
        peer: usize,
    },
    Mismatch {
        peer: usize,
        actual: [u8; 32],
    },
}

fn check_receipts(logs: &[Verified], skew_ms: u64) -> Result<u64, VerifyFailure> {
    let mut by_party: HashMap<&str, usize> = HashMap::new();
    for (i, log) in logs.iter().enumerate() {
        if let Some(j) = by_party.insert(log.summary.party.as_str(), i) {
            return Err(fail(
                &log.summary.path,
                None,
                None,
                Problem::WrongParty,
                format!(
                    "this is {}'s log, and so is {}; give each party's log once",
                    log.summary.party,
                    logs[j].summary.path.display()
                ),
            ));
        }
    }

    let mut checked = 0;
    // (holder, receipt, outcome), in file order.
    let mut outcomes = Vec::new();
    for (h, holder) in logs.iter().enumerate() {
        for receipt in &holder.receipts {
            if receipt.peer == holder.summary.party {
                continue;
            }
            let holder_name = &holder.summary.party;
            let Some(&p) = by_party.get(receipt.peer.as_str()) else {
                // The peer's log is not given: the time in the receipt is all there is.
                outcomes.push((h, receipt, check_receipt_time(receipt, holder_name, skew_ms)));
                continue;
            };
            let peer = &logs[p];
            if receipt.peer_seq < peer.summary.first_seq {
                // Deleted by the peer's retention: the receipt's signed time is left.
                if let Some(outcome) = check_deleted_receipt(receipt, holder_name, peer, skew_ms) {
                    checked += 1;
                    outcomes.push((h, receipt, outcome));
                }
                continue;
            }
            checked += 1;
            outcomes.push((h, receipt, check_receipt(receipt, holder_name, p, peer, skew_ms)));
        }
    }

    let first_failure = outcomes.iter().find(|(_, _, o)| !matches!(o, Outcome::Matched));
    let Some((h, receipt, outcome)) = first_failure else {
        return Ok(checked);
    };
    let holder = &logs[*h].summary.party;
    let held = format!("{}:{}", receipt.file.display(), receipt.line);
    Err(match outcome {
        Outcome::Matched => unreachable!("filtered above"),
        Outcome::Failed(failure) => failure.clone(),
        Outcome::Truncated { peer } => {
            let peer_log = &logs[*peer];
            let s = &peer_log.summary;
            let (file, line) = match &s.torn_tail {
                Some(t) => (t.file.clone(), t.line),
                None => peer_log.position(s.last_seq),
            };
            let torn = if s.torn_tail.is_some() { " (followed by a torn record)" } else { "" };
            fail(
                &file,
                Some(line),
                Some(s.last_seq),
                Problem::Truncated,
                format!(
                    "{}'s log ends at record {}{torn}, but {holder} holds its signed head for record {} ({held}): records {}..={} at least were cut from the end",
                    s.party,
                    s.last_seq,
                    receipt.peer_seq,
                    s.last_seq + 1,
                    receipt.peer_seq
                ),
            )
        }
        Outcome::Mismatch { peer, actual } => {
            let peer_log = &logs[*peer];
            // The latest receipt below this one that still matches bounds the rewrite.
            let bound = outcomes
                .iter()
                .filter(|(_, r, o)| {
                    matches!(o, Outcome::Matched) && r.peer == receipt.peer && r.peer_seq < receipt.peer_seq
                })
                .max_by_key(|(_, r, _)| r.peer_seq);
            let after = match bound {
                Some((bh, r, _)) => format!(
                    ", after record {} (which {}'s receipt at {}:{} still matches)",
                    r.peer_seq,
                    logs[*bh].summary.party,
                    r.file.display(),
                    r.line
                ),
                None => String::new(),
            };
            let (file, line) = peer_log.position(receipt.peer_seq);
            fail(
                &file,
                Some(line),
                Some(receipt.peer_seq),
                Problem::ReceiptMismatch,
                format!(
                    "{holder} holds {}'s signed head {} for this record ({held}), but the record hashes to {}: {}'s log was rewritten at or before this record{after}",
                    receipt.peer,
                    receipt.peer_head,
                    hex::encode(actual),
                    receipt.peer
                ),
            )
        }
    })
}

fn check_receipt(receipt: &PendingReceipt, holder: &str, p: usize, peer: &Verified, skew_ms: u64) -> Outcome {
    let at = |problem, message| {
        Outcome::Failed(fail(&receipt.file, Some(receipt.line), Some(receipt.seq), problem, message))
    };
    let head: [u8; 32] = match hex::decode(&receipt.peer_head).ok().and_then(|h| h.try_into().ok()) {
        Some(h) => h,
        None => {
            return at(Problem::Malformed, "the receipt's peer_head is not 64 hex digits".into());
        }
    };
    let Ok(signature) = hex::decode(&receipt.signature_hex) else {
        return at(Problem::BadSignature, "the receipt's signature is not valid hex".into());
    };
    let payload = head_payload(&receipt.peer, receipt.peer_seq, receipt.peer_time_ms, &head);
    let s = &peer.summary;
    let signed = if receipt.peer_seq <= s.last_seq {
        peer.cert_at(receipt.peer_seq).is_some_and(|c| pki::verify_signature(c, &payload, &signature).is_ok())
    } else {
        // Beyond the end: the certificate may have been cut too, so any of the peer's will do.
        peer.certs.iter().any(|(_, c)| pki::verify_signature(c, &payload, &signature).is_ok())
    };
    if !signed {
        return at(
            Problem::BadSignature,
            format!(
                "{holder}'s receipt of {}'s head for record {} does not verify with {}'s certificate: the receipt was forged or altered",
                receipt.peer, receipt.peer_seq, receipt.peer
            ),
        );
    }
    if receipt.peer_seq > s.last_seq {
        return Outcome::Truncated { peer: p };
    }
    // Unwrap safety: first_seq ≤ peer_seq ≤ last_seq, and there is one hash per record.
    let index = usize::try_from(receipt.peer_seq - s.first_seq).unwrap();
    let actual = peer.hashes[index];
    if actual != head {
        return Outcome::Mismatch { peer: p, actual };
    }
    // The head covers the record's time, so this differs only if the peer signed a
    // time other than its record's.
    let time = peer.times[index];
    let held = format!("{}:{}", receipt.file.display(), receipt.line);
    if receipt.peer_time_ms != time {
        let (file, line) = peer.position(receipt.peer_seq);
        return Outcome::Failed(fail(
            &file,
            Some(line),
            Some(receipt.peer_seq),
            Problem::ReceiptMismatch,
            format!(
                "{} signed its head for this record with the time {}, but the record is dated {} ({holder}'s receipt at {held}): {} misstated its own time",
                receipt.peer,
                when(receipt.peer_time_ms),
                when(time),
                receipt.peer
            ),
        ));
    }
    if time > receipt.time_ms.saturating_add(skew_ms) {
        let (file, line) = peer.position(receipt.peer_seq);
        return Outcome::Failed(fail(
            &file,
            Some(line),
            Some(receipt.peer_seq),
            Problem::AheadOfPeer,
            format!(
                "this record is dated {}, but {holder} logged receiving {}'s signed head for it at {} ({held}), more than {} s earlier: {}'s clock ran ahead of {holder}'s, or its timeline was moved forward",
                when(time),
                receipt.peer,
                when(receipt.time_ms),
                skew_ms / 1000,
                receipt.peer
            ),
        ));
    }
    // The holder also named the message the head came with: the peer's record at that
    // head (or just before it, when an automatic seal followed) must be the egress
    // of exactly that message.
    if !receipt.sha256.is_empty() {
        let kind_at =
            |q: u64| q.checked_sub(s.first_seq).and_then(|i| peer.kinds.get(usize::try_from(i).ok()?)).copied();
        let named = match kind_at(receipt.peer_seq) {
            Some(RecordKind::Egress(h)) => Some(h),
            Some(RecordKind::Seal) => match receipt.peer_seq.checked_sub(1).and_then(kind_at) {
                Some(RecordKind::Egress(h)) => Some(h),
                _ => None,
            },
            _ => None,
        };
        let mut wanted = [0u8; 32];
        let wanted_ok = hex::decode_to_slice(&receipt.sha256, &mut wanted).is_ok();
        if !wanted_ok || named != Some(wanted) {
            let (file, line) = peer.position(receipt.peer_seq);
            return at(
                Problem::ReceiptMismatch,
                format!(
                    "{holder} received a message with SHA-256 {} under {}'s head for record {}, but {}:{} records {}: what {} says it sent differs from what {holder} received",
                    receipt.sha256,
                    receipt.peer,
                    receipt.peer_seq,
                    file.display(),
                    line,
                    named
                        .map(|h| format!("an egress with SHA-256 {}", hex::encode(h)))
                        .unwrap_or_else(|| "no egress there".into()),
                    receipt.peer
                ),
            );
        }
    }
    Outcome::Matched
}

/// A receipt of a party whose log is not given: its signed time must not be later
/// than the holder's record of receiving it, plus the skew.
fn check_receipt_time(receipt: &PendingReceipt, holder: &str, skew_ms: u64) -> Outcome {
    if receipt.peer_time_ms <= receipt.time_ms.saturating_add(skew_ms) {
        return Outcome::Matched;
    }
    Outcome::Failed(fail(
        &receipt.file,
        Some(receipt.line),
        Some(receipt.seq),
        Problem::AheadOfPeer,
        format!(
            "{holder} logged this receipt at {}, but {}'s signed head in it is for a record dated {}, more than {} s later: {}'s clock ran ahead of {holder}'s, or its timeline was moved forward",
            when(receipt.time_ms),
            receipt.peer,
            when(receipt.peer_time_ms),
            skew_ms / 1000,
            receipt.peer
        ),
    ))
}

/// A receipt of a record the peer's retention deleted. When the signature verifies
/// with one of the peer's certificates, its time must not be later than the holder's
/// receipt (plus the skew), nor later than the time the peer's deletion says its newest
/// deleted record had (the same time for that very record). `None` when the
/// signature cannot be attributed (the certificate went with the deleted files).
fn check_deleted_receipt(receipt: &PendingReceipt, holder: &str, peer: &Verified, skew_ms: u64) -> Option<Outcome> {
    let head: [u8; 32] = hex::decode(&receipt.peer_head).ok()?.try_into().ok()?;
    let signature = hex::decode(&receipt.signature_hex).ok()?;
    let payload = head_payload(&receipt.peer, receipt.peer_seq, receipt.peer_time_ms, &head);
    if !peer.certs.iter().any(|(_, c)| pki::verify_signature(c, &payload, &signature).is_ok()) {
        return None;
    }
    if let Outcome::Failed(failure) = check_receipt_time(receipt, holder, skew_ms) {
        return Some(Outcome::Failed(failure));
    }
    let Some(r) = peer.retention.as_ref() else { return Some(Outcome::Matched) };
    let later = receipt.peer_time_ms > r.newest_deleted_ms;
    let differs = receipt.peer_seq == r.upto_seq && receipt.peer_time_ms != r.newest_deleted_ms;
    if receipt.peer_seq > r.upto_seq || !(later || differs) {
        return Some(Outcome::Matched);
    }
    Some(Outcome::Failed(fail(
        &r.file,
        Some(r.line),
        Some(r.seq),
        Problem::Truncated,
        format!(
            "this deletion says the newest record it deleted (record {}) was written {}, but {holder} holds {}'s signed head for record {} dated {} ({}:{}): the deletion misstates the age of what it deleted{}",
            r.upto_seq,
            when(r.newest_deleted_ms),
            receipt.peer,
            receipt.peer_seq,
            when(receipt.peer_time_ms),
            receipt.file.display(),
            receipt.line,
            if later { ", and records were deleted before their retention period ended" } else { "" }
        ),
    )))
}

/// No two records, in one log or in two, hold different views (U2, U3) of a round.
fn check_round_views(logs: &[Verified]) -> Result<(), VerifyFailure> {
    let mut first: HashMap<&str, (&Verified, &PendingView)> = HashMap::new();
    for log in logs {
        for view in &log.round_views {
            let Some((other_log, other)) = first.get(view.round.as_str()) else {
                first.insert(view.round.as_str(), (log, view));
                continue;
            };
            if other.delivered == view.delivered && other.survivors == view.survivors {
                continue;
            }
            let names = |v: &[String]| format!("[{}]", v.join(", "));
            return Err(fail(
                &view.file,
                Some(view.line),
                Some(view.seq),
                Problem::SplitView,
                format!(
                    "round {}: {} logged here (at stage {}) U2 = {} and U3 = {}, but {} logged at {}:{} (at stage {}) U2 = {} and U3 = {}: the coordinator showed nodes different views of who took part",
                    view.round,
                    log.summary.party,
                    view.stage,
                    names(&view.delivered),
                    names(&view.survivors),
                    other_log.summary.party,
                    other.file.display(),
                    other.line,
                    other.stage,
                    names(&other.delivered),
                    names(&other.survivors)
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Benchmark
// ---------------------------------------------------------------------------

/// Benchmark figures for `fedcrm bench audit`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchFigures {
    /// Records verified (the egress records written, plus seals and log-opened records).
    pub records: u64,
    /// Bytes of log verified.
    pub bytes: u64,
    /// Time to write the log (without fsync: the benchmark measures the writer's own work).
    pub write_seconds: f64,
    /// Wall time for [`verify_paths`] on it (seal signatures are checked on a second
    /// thread beside the walk; everything else on one).
    pub verify_seconds: f64,
    /// Time for the floor: reading the same files and SHA-256 over every line.
    pub floor_seconds: f64,
    /// `records / verify_seconds`.
    pub records_per_second: f64,
    /// `records / floor_seconds`.
    pub floor_records_per_second: f64,
    /// `verify_seconds / floor_seconds`.
    pub ratio: f64,
}

/// For `fedcrm bench audit`: writes a log of `records` egress records (realistic sizes,
/// a seal every 64 records, default rotation) in a temporary directory with a
/// throwaway CA, times [`verify_paths`] on it, and times the floor in the same run:
/// reading the same files and SHA-256 over every line's bytes, the work no verifier
/// can skip. Prints nothing.
pub fn bench(records: u64) -> Result<BenchFigures, AuditError> {
    let ca = pki::ca_init("bench", 30)?;
    let id = pki::Identity {
        name: "bench-node.brand".into(),
        organisation: "Bench Franchise Ltd".into(),
        role: pki::Role::Node(pki::OrgKind::Franchisee),
    };
    let (key, csr) = pki::new_key_and_csr(&id)?;
    let (cert_pem, _) = pki::sign_csr(&ca, &csr, pki::Validity::days_from_now(30))?;
    let first = |pem: &str| -> Result<Vec<u8>, AuditError> {
        pki::pem_to_der_certs(pem)?.into_iter().next().ok_or_else(|| AuditError::Bench("no certificate".into()))
    };
    let (cert_der, ca_der) = (first(&cert_pem)?, first(&ca.cert_pem)?);

    let tmp = std::env::temp_dir();
    let dir = tempfile::Builder::new().prefix("fedcrm-audit-bench-").tempdir_in(&tmp).map_err(io_error(&tmp))?;
    let config = AuditConfig { seal_every_records: 64, seal_every_seconds: 86_400, ..AuditConfig::default() };
    let identity = LogIdentity {
        certificate_der: cert_der,
        role: id.role.as_str().into(),
        organisation: id.organisation.clone(),
        software: format!("fedcrm {}", env!("CARGO_PKG_VERSION")),
    };
    let signer = pki::SigningKey::from_pem(&key)?;
    let mut log = AuditLog::open(dir.path(), &id.name, identity, signer, config, Arc::new(SystemClock))?;
    log.durable = false;
    let start = Instant::now();
    for i in 0..records {
        log.append(Event::Egress {
            round: Some(format!("r-{:08x}", i / 512)),
            analysis: Some(format!("a-{:08x}", i / 8192)),
            message: "masked-chunk".into(),
            bytes: 65_536 + i % 4096,
            sha256: hex::encode(line_hash(&i.to_be_bytes())),
        })?;
    }
    log.seal()?;
    let write_seconds = start.elapsed().as_secs_f64();
    drop(log);

    let start = Instant::now();
    let report = verify_paths(&[dir.path().to_path_buf()], &ca_der)
        .map_err(|f| AuditError::Bench(format!("the benchmark log did not verify: {f}")))?;
    let verify_seconds = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut bytes = 0u64;
    let mut acc = 0u8;
    for (_, file) in list_files(dir.path())? {
        let data = fs::read(&file).map_err(io_error(&file))?;
        bytes += data.len() as u64;
        for (line, _) in lines(&data) {
            acc ^= line_hash(line)[0];
        }
    }
    std::hint::black_box(acc);
    let floor_seconds = start.elapsed().as_secs_f64();

    let verified = report.logs.iter().map(|l| l.records).sum::<u64>();
    Ok(BenchFigures {
        records: verified,
        bytes,
        write_seconds,
        verify_seconds,
        floor_seconds,
        records_per_second: verified as f64 / verify_seconds,
        floor_records_per_second: verified as f64 / floor_seconds,
        ratio: verify_seconds / floor_seconds,
    })
}
