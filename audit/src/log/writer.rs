//! The writer: one party's open log, appending, sealing, rotating and deleting by
//! retention; and reading a directory's records back without verifying them.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fedcrm_pki::{self as pki, SigningKey};

use super::files::{file_name, files_of, lines, list_files, lock_dir, open_append, scan_tail, sync_dir};
use super::{Appended, AuditConfig, AuditError, Clock, LogIdentity, MS_PER_DAY, SignedHead, io_error};
use crate::record::{Event, Record};
use crate::{head_payload, line_hash};

/// A party's open audit log. Not internally synchronised: share it behind a mutex.
pub struct AuditLog {
    dir: PathBuf,
    party: String,
    identity: LogIdentity,
    signer: SigningKey,
    config: AuditConfig,
    clock: Arc<dyn Clock>,
    file: File,
    file_number: u64,
    file_bytes: u64,
    /// Calendar month (UTC, year·12 + month) of the current file: a record in a later
    /// month starts a new file, so retention can delete whole months.
    file_month: i64,
    /// Sequence number of the next record.
    next_seq: u64,
    /// Head after the last record (all zeros before the first).
    head: [u8; 32],
    /// Time of the last record (0 before the first): no record is dated earlier.
    last_time_ms: u64,
    last_is_seal: bool,
    since_seal: u64,
    last_seal_ms: u64,
    /// `fsync` every record (always, except in [`crate::verify::bench`]).
    pub(crate) durable: bool,
    poisoned: bool,
    /// The exclusive OS lock on the directory's `.lock` file, held while the log is open.
    _lock: File,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.dir)
            .field("party", &self.party)
            .field("seq", &self.next_seq.checked_sub(1))
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creates) the log of `party` in `dir`: files `audit-000001.log`,
    /// `audit-000002.log`, … (mode 0600).
    ///
    /// Finds the last complete record (seq, head) to continue the chain. If the newest
    /// file ends with a torn line (no newline: the process died mid-write) or a last
    /// line that does not parse, it is cut off and an [`Event::TornTailRecovered`]
    /// records its length and SHA-256. Then appends [`Event::LogOpened`] with the
    /// certificate. Refuses a directory holding another party's log, a key the
    /// certificate does not certify, and a certificate naming another party.
    ///
    /// Refuses a configuration [`AuditConfig::validate`] refuses, in particular a
    /// retention period under [`super::MIN_RETENTION_DAYS`].
    pub fn open(
        dir: &Path,
        party: &str,
        identity: LogIdentity,
        signer: SigningKey,
        config: AuditConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuditError> {
        config.validate()?;
        Self::open_validated(dir, party, identity, signer, config, clock)
    }

    /// [`AuditLog::open`] for tests that need files old enough for retention without
    /// moving a clock three years: accepts any `retention_days` of 1 or more. Behind
    /// the `test-util` feature, so no shipped build can keep a log for less than
    /// [`super::MIN_RETENTION_DAYS`].
    #[cfg(any(test, feature = "test-util"))]
    pub fn open_with_short_retention(
        dir: &Path,
        party: &str,
        identity: LogIdentity,
        signer: SigningKey,
        config: AuditConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuditError> {
        config.validate_with_min_retention(1)?;
        Self::open_validated(dir, party, identity, signer, config, clock)
    }

    fn open_validated(
        dir: &Path,
        party: &str,
        identity: LogIdentity,
        signer: SigningKey,
        config: AuditConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuditError> {
        signer.check_matches_cert(&identity.certificate_der).map_err(|e| {
            AuditError::Identity(format!("{e}; the audit log must be signed with the party's certified key"))
        })?;
        // The brand CA keeps a log too (certificate issuance), under the fixed party
        // name [`crate::CA_PARTY`] and its own self-signed certificate.
        let named = if identity.role == crate::CA_PARTY {
            pki::Identity {
                name: crate::CA_PARTY.into(),
                organisation: identity.organisation.clone(),
                role: pki::Role::Analyst,
            }
        } else {
            pki::identity_from_cert(&identity.certificate_der)?
        };
        if named.name != party {
            return Err(AuditError::Identity(format!(
                "the certificate is {}'s, but the log is opened for {party}; use the party's own certificate",
                named.name
            )));
        }
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock = lock_dir(dir)?;
        let files = list_files(dir)?;

        let mut next_seq = 0;
        let mut head = [0u8; 32];
        let mut last_time_ms = 0;
        // Time of the newest file's last record: the file's month for rotation.
        let mut current_file_time = None;
        let mut torn = None;
        let (file_number, path) = match files.last() {
            None => {
                let path = dir.join(file_name(1));
                drop(open_append(&path, true)?);
                sync_dir(dir)?;
                (1, path)
            }
            Some((number, path)) => {
                let tail = scan_tail(path, true)?;
                current_file_time = tail.last.as_ref().map(|(record, _)| record.time_ms);
                if !tail.torn.is_empty() {
                    let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
                    file.set_len(tail.keep).map_err(io_error(path))?;
                    file.sync_all().map_err(io_error(path))?;
                    torn = Some(Event::TornTailRecovered {
                        file: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                        bytes: tail.torn.len() as u64,
                        sha256: hex::encode(line_hash(&tail.torn)),
                    });
                }
                // The last complete record, in this file or an older one.
                let mut last = tail.last;
                for (_, older) in files.iter().rev().skip(1) {
                    if last.is_some() {
                        break;
                    }
                    last = scan_tail(older, false)?.last;
                }
                if let Some((record, hash)) = last {
                    if record.party != party {
                        return Err(AuditError::PartyMismatch {
                            dir: dir.to_path_buf(),
                            found: record.party,
                            expected: party.to_owned(),
                        });
                    }
                    next_seq = record.seq + 1;
                    head = hash;
                    last_time_ms = record.time_ms;
                }
                (*number, path.clone())
            }
        };
        let file = open_append(&path, false)?;
        let file_bytes = file.metadata().map_err(io_error(&path))?.len();
        let now = clock.now_ms().max(last_time_ms);
        // The month of the file's records (not of its modification time, which comes
        // from another clock than the records').
        let file_month = month_of(current_file_time.unwrap_or(now));
        let mut log = AuditLog {
            dir: dir.to_path_buf(),
            party: party.to_owned(),
            identity,
            signer,
            config,
            clock,
            file,
            file_number,
            file_bytes,
            file_month,
            next_seq,
            head,
            last_time_ms,
            last_is_seal: false,
            since_seal: 0,
            last_seal_ms: now,
            durable: true,
            poisoned: false,
            _lock: lock,
        };
        if let Some(event) = torn {
            log.write_event(|_| Ok(event.clone()))?;
        }
        let opened = log.log_opened();
        log.write_event(|_| Ok(opened.clone()))?;
        Ok(log)
    }

    /// Appends one record and `fsync`s it before returning; starts a new file first if
    /// this one would pass `rotate_bytes`; then seals if `seal_every_records` records
    /// or `seal_every_seconds` have passed since the last seal. Returns the record's
    /// sequence number and head (a seal may follow it).
    pub fn append(&mut self, event: Event) -> Result<Appended, AuditError> {
        let appended = self.write_event(|_| Ok(event.clone()))?;
        let now = self.now_ms();
        if self.since_seal >= self.config.seal_every_records
            || now.saturating_sub(self.last_seal_ms) >= self.config.seal_every_seconds.saturating_mul(1000)
        {
            self.seal()?;
        }
        Ok(appended)
    }

    /// Appends a [`Event::Seal`] now (round end, shutdown): ECDSA over
    /// [`crate::head_payload`]`(party, seq, time, head)` of the record just before it.
    /// Does nothing if that record is already a seal.
    pub fn seal(&mut self) -> Result<(), AuditError> {
        if self.last_is_seal {
            return Ok(());
        }
        self.write_event(|log| {
            let (upto_seq, head) = log.head();
            let signature = log.signer.sign(&head_payload(&log.party, upto_seq, log.last_time_ms, &head))?;
            Ok(Event::Seal { upto_seq, head: hex::encode(head), signature_hex: hex::encode(signature) })
        })?;
        self.last_is_seal = true;
        self.since_seal = 0;
        self.last_seal_ms = self.now_ms();
        Ok(())
    }

    /// The sequence number and head of the last record.
    pub fn head(&self) -> (u64, [u8; 32]) {
        // `open` always writes a record, so next_seq ≥ 1.
        (self.next_seq.saturating_sub(1), self.head)
    }

    /// The time of the last record (ms since the Unix epoch).
    pub fn head_time_ms(&self) -> u64 {
        self.last_time_ms
    }

    /// The current head and its record's time, signed with the party's key, to attach
    /// to a message as a cross-party receipt.
    pub fn signed_head(&self) -> Result<SignedHead, AuditError> {
        let (seq, head) = self.head();
        let time_ms = self.last_time_ms;
        let signature = self.signer.sign(&head_payload(&self.party, seq, time_ms, &head))?;
        Ok(SignedHead { party: self.party.clone(), seq, time_ms, head, signature })
    }

    /// The time for the next record: the clock, but never earlier than the last
    /// record's time.
    ///
    /// Why the later of the two rather than refusing to write when the clock went
    /// back: every egress, receipt and release is logged before it happens, so a
    /// writer that refused would stop the party whenever NTP steps its clock back a
    /// little. Taking the later time keeps every log's times in order (which the
    /// verifier checks, and which makes a record's time a bound for everything before
    /// it), and a clock that is really wrong still shows: its records run ahead of
    /// the auditor's clock or of the peers' receipts.
    fn now_ms(&self) -> u64 {
        self.clock.now_ms().max(self.last_time_ms)
    }

    /// Deletes the oldest rotated files whose newest record is more than
    /// `retention_days` old (never the current file, and only from the start of the
    /// log, so the rest stays one chain). First appends an [`Event::RetentionDeleted`]
    /// naming them, the last deleted record, its head (so a crash midway leaves a log
    /// that still verifies) and the time of the newest record deleted (which the
    /// verifier checks against the period), then deletes them. Returns the deleted
    /// paths; when nothing is old enough, writes nothing.
    pub fn apply_retention(&mut self) -> Result<Vec<PathBuf>, AuditError> {
        let cutoff = self.now_ms().saturating_sub(u64::from(self.config.retention_days) * MS_PER_DAY);
        let mut doomed = Vec::new();
        let mut last = None;
        let mut newest_deleted_ms = 0;
        for (number, path) in list_files(&self.dir)? {
            if number >= self.file_number {
                break;
            }
            match scan_tail(&path, false)?.last {
                Some((record, hash)) if record.time_ms < cutoff => {
                    last = Some((record.seq, hash));
                    newest_deleted_ms = newest_deleted_ms.max(record.time_ms);
                    doomed.push(path);
                }
                Some(_) => break,
                // An empty rotated file (a crash right after rotation) goes with the others.
                None => doomed.push(path),
            }
        }
        let Some((upto_seq, last_head)) = last else {
            return Ok(Vec::new());
        };
        let files = doomed.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
        let event = Event::RetentionDeleted {
            files,
            upto_seq,
            last_head: hex::encode(last_head),
            retention_days: self.config.retention_days,
            newest_deleted_ms,
        };
        self.append(event)?;
        for path in &doomed {
            fs::remove_file(path).map_err(io_error(path))?;
        }
        sync_dir(&self.dir)?;
        Ok(doomed)
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The party whose log this is.
    pub fn party(&self) -> &str {
        &self.party
    }

    fn log_opened(&self) -> Event {
        Event::LogOpened {
            certificate_der_hex: hex::encode(&self.identity.certificate_der),
            role: self.identity.role.clone(),
            organisation: self.identity.organisation.clone(),
            software: self.identity.software.clone(),
        }
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(file_name(self.file_number))
    }

    /// The record's line (with its newline) and its time.
    fn serialize(&self, event: Event) -> Result<(Vec<u8>, u64), AuditError> {
        let time_ms = self.now_ms();
        let record =
            Record { seq: self.next_seq, prev: hex::encode(self.head), time_ms, party: self.party.clone(), event };
        let mut line = serde_json::to_vec(&record).map_err(|e| AuditError::Serialize(e.to_string()))?;
        line.push(b'\n');
        Ok((line, time_ms))
    }

    /// Writes the event built by `make` (for the current head), rotating first if the
    /// line would take the file past `rotate_bytes` or a new calendar month began.
    fn write_event(&mut self, make: impl Fn(&Self) -> Result<Event, AuditError>) -> Result<Appended, AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned { path: self.current_path() });
        }
        let (mut line, mut time_ms) = self.serialize(make(self)?)?;
        let new_month = self.file_bytes > 0 && month_of(time_ms) != self.file_month;
        if new_month || (self.file_bytes > 0 && self.file_bytes + line.len() as u64 > self.config.rotate_bytes) {
            self.rotate()?;
            (line, time_ms) = self.serialize(make(self)?)?;
        }
        self.write_line(&line, time_ms)
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let number = self.file_number + 1;
        let path = self.dir.join(file_name(number));
        let file = open_append(&path, true)?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.file_number = number;
        self.file_bytes = 0;
        let (line, time_ms) = self.serialize(self.log_opened())?;
        self.file_month = month_of(time_ms);
        self.write_line(&line, time_ms)?;
        Ok(())
    }

    fn write_line(&mut self, line: &[u8], time_ms: u64) -> Result<Appended, AuditError> {
        let written =
            self.file.write_all(line).and_then(|()| if self.durable { self.file.sync_data() } else { Ok(()) });
        if let Err(error) = written {
            // The file may now end with part of this line; only a reopen (which sets a
            // torn tail aside and logs it) may write after it.
            self.poisoned = true;
            return Err(AuditError::Io { path: self.current_path(), error });
        }
        self.file_bytes += line.len() as u64;
        self.head = line_hash(&line[..line.len() - 1]);
        self.last_time_ms = time_ms;
        let appended = Appended { seq: self.next_seq, time_ms, head: self.head };
        self.next_seq += 1;
        self.last_is_seal = false;
        self.since_seal += 1;
        Ok(appended)
    }
}

/// All complete records of a log directory (its `audit-*.log` files in order) or of a
/// single file, skipping a torn last line (no newline). For reports and
/// `fedcrm node egress`: nothing is verified, but a complete line that does not parse
/// is an error.
pub fn read_records(path: &Path) -> Result<Vec<Record>, AuditError> {
    let files = files_of(path)?;
    let mut records = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let bytes = fs::read(file).map_err(io_error(file))?;
        for (n, (line, complete)) in lines(&bytes).enumerate() {
            let line_no = Some(n as u64 + 1);
            if !complete {
                if i + 1 == files.len() {
                    break;
                }
                return Err(AuditError::Corrupt {
                    file: file.clone(),
                    line: line_no,
                    reason: "the line is incomplete, but this is not the newest log file".into(),
                });
            }
            let record = serde_json::from_slice(line).map_err(|e| AuditError::Corrupt {
                file: file.clone(),
                line: line_no,
                reason: format!("the line is not an audit record ({e})"),
            })?;
            records.push(record);
        }
    }
    Ok(records)
}

/// Calendar month (UTC) of a unix-millisecond instant, as year·12 + month.
fn month_of(ms: u64) -> i64 {
    match time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64) {
        Ok(t) => i64::from(t.year()) * 12 + i64::from(t.month() as u8),
        Err(_) => 0,
    }
}

/// One party's log shared by its tasks (a node's session and egress door; the
/// coordinator's services, registry and rounds).
pub type SharedLog = Arc<Mutex<AuditLog>>;

/// Lock a shared log; a poisoned lock means a panic mid-append, and the file is still
/// consistent (appends are whole, fsynced lines), so go on.
pub fn lock(log: &SharedLog) -> MutexGuard<'_, AuditLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}
