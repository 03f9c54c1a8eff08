//! One log: the walk through a party's files, line by line in file order (chain,
//! sequence, times, certificates, seals checked on a second thread), and what a log
//! that passed carries to the checks between logs.

use super::*;

/// A file's records: `first_seq..first_seq + records` on lines `1..=records`.
pub(super) struct Span {
    pub(super) file: PathBuf,
    pub(super) first_seq: u64,
    pub(super) records: u64,
}

/// A receipt waiting for the cross-party check.
pub(super) struct PendingReceipt {
    pub(super) file: PathBuf,
    pub(super) line: u64,
    pub(super) seq: u64,
    /// When the holder logged it.
    pub(super) time_ms: u64,
    pub(super) peer: String,
    pub(super) peer_seq: u64,
    pub(super) peer_head: String,
    pub(super) peer_time_ms: u64,
    pub(super) signature_hex: String,
    /// SHA-256 of the message the head came with, when the holder recorded it.
    pub(super) sha256: String,
}

/// A log that passed its own checks, with what the cross-party checks need.
pub(super) struct Verified {
    pub(super) summary: LogSummary,
    pub(super) spans: Vec<Span>,
    /// Head after each record, indexed by `seq - first_seq`.
    pub(super) hashes: Vec<[u8; 32]>,
    /// (seq of the log-opened record, certificate DER), in order.
    pub(super) certs: Vec<(u64, Arc<[u8]>)>,
    pub(super) receipts: Vec<PendingReceipt>,
    /// What each record is, for the receipt's message check, indexed like `hashes`.
    pub(super) kinds: Vec<RecordKind>,
    /// Each record's time, indexed like `hashes`.
    pub(super) times: Vec<u64>,
    /// The retention deletion that accounts for the log's missing start, if any.
    pub(super) retention: Option<Retention>,
    /// The round views in the log, in order.
    pub(super) round_views: Vec<PendingView>,
}

/// A [`Event::RoundView`] waiting for the check across logs.
pub(super) struct PendingView {
    pub(super) file: PathBuf,
    pub(super) line: u64,
    pub(super) seq: u64,
    pub(super) round: String,
    pub(super) stage: String,
    pub(super) delivered: Vec<String>,
    pub(super) survivors: Vec<String>,
}

/// Just enough of a record to check a receipt's message hash against it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum RecordKind {
    /// An egress record and the SHA-256 it names (all zeros if not valid hex).
    Egress([u8; 32]),
    Seal,
    Other,
}

impl Verified {
    /// File and line of a record known to be in the log.
    pub(super) fn position(&self, seq: u64) -> (PathBuf, u64) {
        for span in &self.spans {
            if seq >= span.first_seq && seq < span.first_seq + span.records {
                return (span.file.clone(), seq - span.first_seq + 1);
            }
        }
        (self.summary.path.clone(), 0)
    }

    /// The certificate in force at record `seq`.
    pub(super) fn cert_at(&self, seq: u64) -> Option<&[u8]> {
        let i = self.certs.partition_point(|(s, _)| *s <= seq);
        self.certs.get(i.saturating_sub(1)).map(|(_, c)| &c[..])
    }
}

/// The walk through one log.
pub(super) struct Walk<'a> {
    pub(super) ca_der: &'a [u8],
    pub(super) options: VerifyOptions,
    pub(super) files: &'a [PathBuf],
    pub(super) party: Option<String>,
    /// Sequence number the next record must have (None before the first).
    pub(super) expected: Option<u64>,
    pub(super) prev_hash: [u8; 32],
    /// File index and line of the previous record.
    pub(super) prev_at: Option<(usize, u64)>,
    /// Time of the previous record.
    pub(super) prev_time: Option<u64>,
    /// The current certificate and where it was stated.
    pub(super) cert: Option<(Arc<[u8]>, usize, u64)>,
    /// Seal signatures, checked on a second thread while this one walks on.
    pub(super) seal_jobs: SyncSender<SealJob>,
    pub(super) seals: u64,
    pub(super) last_seal: Option<u64>,
    pub(super) records: u64,
    /// A record whose head (and time) a retention-deleted record states, when a
    /// deletion was interrupted and the record is still there.
    pub(super) head_check: Option<Retention>,
    pub(super) out: Verified,
}

pub(super) fn verify_log(path: &Path, ca_der: &[u8], options: VerifyOptions) -> Result<Verified, VerifyFailure> {
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
pub(super) struct SealJob {
    pub(super) cert: Arc<[u8]>,
    pub(super) payload: Vec<u8>,
    pub(super) signature: Vec<u8>,
    pub(super) file: PathBuf,
    pub(super) line: u64,
    pub(super) seq: u64,
    /// Where the certificate was stated.
    pub(super) cert_at: String,
}

impl SealJob {
    pub(super) fn check(self) -> Option<VerifyFailure> {
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
    pub(super) fn run(mut self, path: &Path) -> Result<Verified, VerifyFailure> {
        self.files()?;
        self.finish(path)
    }

    /// Walks every line of every file, in order.
    pub(super) fn files(&mut self) -> Result<(), VerifyFailure> {
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

    pub(super) fn record(
        &mut self,
        fi: usize,
        line_no: u64,
        line: &[u8],
        bytes: &[u8],
        pos: usize,
    ) -> Result<(), VerifyFailure> {
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
    pub(super) fn check_time(&self, fi: usize, line_no: u64, rec: &Record) -> Result<(), VerifyFailure> {
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
    pub(super) fn check_late_start(&mut self, fi: usize, line_no: u64, rec: &Record) -> Result<(), VerifyFailure> {
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
    pub(super) fn check_retention(&self, r: &Retention) -> Result<(), VerifyFailure> {
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
    pub(super) fn sequence_failure(
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

    pub(super) fn finish(mut self, path: &Path) -> Result<Verified, VerifyFailure> {
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
pub(super) fn consecutive_files(a: &Path, b: &Path) -> bool {
    let number = |p: &Path| p.file_name().and_then(|n| n.to_str()).and_then(crate::log::file_number);
    matches!((number(a), number(b)), (Some(x), Some(y)) if x + 1 == y)
}

/// A record time for messages: RFC 3339 UTC.
pub(super) fn when(time_ms: u64) -> String {
    i64::try_from(time_ms / 1000)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{time_ms} ms"))
}
