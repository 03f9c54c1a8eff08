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

use fedcrm_pki::{self as pki, Usage};
use serde::Serialize;

use crate::log::{
    AuditConfig, AuditError, AuditLog, Clock as _, LogIdentity, MIN_RETENTION_DAYS, SystemClock, files_of, io_error,
    is_crash_tail, lines, list_files,
};
use crate::record::{Event, GENESIS, Record};
use crate::{head_payload, line_hash};

// One concern per file: the public API here; the walk through one log, retention
// deletions, and the two checks between logs (receipts, round views) beside it; the
// benchmark behind `fedcrm bench audit` apart.
mod bench;
mod receipts;
mod retention;
mod views;
mod walk;

use receipts::*;
use retention::*;
use views::*;
use walk::*;

pub use bench::{BenchFigures, bench};

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
