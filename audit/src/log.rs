//! The audit log writer: append-only, hash-chained, batch-signed, durable.
//!
//! One party (the coordinator, a node, the brand CA) writes one log in one directory,
//! as files `audit-000001.log`, `audit-000002.log`, … in the [`crate::record`] format.
//! [`AuditLog::append`] writes a record and `fsync`s it before returning, so the
//! caller may acknowledge (send, release, answer) only what is already on disk. Every
//! `seal_every_records` records or `seal_every_seconds` seconds, and whenever the
//! caller asks ([`AuditLog::seal`], e.g. at a round end), a [`Event::Seal`] signs the
//! chain head with the party's certified long-term key. [`AuditLog::signed_head`] is
//! the cross-party receipt a party attaches to what it sends; the receiver logs it as
//! an [`Event::Receipt`] ([`SignedHead::receipt`]).
//!
//! Every file starts with an [`Event::LogOpened`] record carrying the certificate, so
//! each file can be verified with only the brand CA even after retention has deleted
//! the older ones. The chain continues across files, restarts and deletions.
//!
//! Never: rewrites or reorders a complete record; writes a secret (the signing key is
//! only used to sign, and `Debug` shows the directory, party and sequence number
//! only); starts a second chain in a directory that holds another party's log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fedcrm_pki::{self as pki, PkiError, Receipt, SigningKey};
use serde::{Deserialize, Serialize};

use crate::record::{Event, Record};
use crate::{head_payload, line_hash};

/// Default for [`AuditConfig::seal_every_records`].
pub const DEFAULT_SEAL_EVERY_RECORDS: u64 = 64;
/// Default for [`AuditConfig::seal_every_seconds`].
pub const DEFAULT_SEAL_EVERY_SECONDS: u64 = 10;
/// Default for [`AuditConfig::rotate_bytes`] (64 MiB).
pub const DEFAULT_ROTATE_BYTES: u64 = 64 * 1024 * 1024;
/// Default for [`AuditConfig::retention_days`]: three years and a day.
pub const DEFAULT_RETENTION_DAYS: u32 = 1096;
/// Smallest [`AuditConfig::retention_days`] any configuration accepts: three years and
/// a day, so an auditor can always look three years back. Shorter periods exist only in
/// tests (`AuditLog::open_with_short_retention`, feature `test-util`).
pub const MIN_RETENTION_DAYS: u32 = 1096;
/// Smallest accepted [`AuditConfig::rotate_bytes`]. Every file starts with the
/// party's certificate (about 2.5 KiB), so smaller files would be mostly that.
pub const MIN_ROTATE_BYTES: u64 = 4096;

const MS_PER_DAY: u64 = 86_400_000;

/// How a party's audit log is sealed, rotated and kept. TOML section `[audit]`.
/// Parsing checks the ranges ([`AuditConfig::validate`]), so a configuration file with
/// an out-of-range value is refused when it is loaded, with the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AuditConfigFields")]
pub struct AuditConfig {
    /// Sign the chain head after this many records since the last seal (default 64;
    /// at least 1). Rounds ends and shutdowns seal as well.
    pub seal_every_records: u64,
    /// Sign the chain head at the first record written this many seconds or more after
    /// the last seal (default 10; at least 1). Checked when a record is appended: an
    /// idle log is not sealed by a timer.
    pub seal_every_seconds: u64,
    /// Start a new file when a record would take the current one past this many bytes
    /// (default 64 MiB; at least 4096). The chain continues in the new file.
    pub rotate_bytes: u64,
    /// Keep rotated files at least this many days after their newest record (default
    /// and minimum 1096: three years and a day). Deletion is logged by
    /// [`AuditLog::apply_retention`].
    pub retention_days: u32,
}

/// [`AuditConfig`] as written, before its ranges are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditConfigFields {
    #[serde(default = "default_seal_every_records")]
    seal_every_records: u64,
    #[serde(default = "default_seal_every_seconds")]
    seal_every_seconds: u64,
    #[serde(default = "default_rotate_bytes")]
    rotate_bytes: u64,
    #[serde(default = "default_retention_days")]
    retention_days: u32,
}

impl TryFrom<AuditConfigFields> for AuditConfig {
    type Error = AuditError;

    fn try_from(f: AuditConfigFields) -> Result<Self, AuditError> {
        let config = AuditConfig {
            seal_every_records: f.seal_every_records,
            seal_every_seconds: f.seal_every_seconds,
            rotate_bytes: f.rotate_bytes,
            retention_days: f.retention_days,
        };
        config.validate()?;
        Ok(config)
    }
}

fn default_seal_every_records() -> u64 {
    DEFAULT_SEAL_EVERY_RECORDS
}
fn default_seal_every_seconds() -> u64 {
    DEFAULT_SEAL_EVERY_SECONDS
}
fn default_rotate_bytes() -> u64 {
    DEFAULT_ROTATE_BYTES
}
fn default_retention_days() -> u32 {
    DEFAULT_RETENTION_DAYS
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            seal_every_records: DEFAULT_SEAL_EVERY_RECORDS,
            seal_every_seconds: DEFAULT_SEAL_EVERY_SECONDS,
            rotate_bytes: DEFAULT_ROTATE_BYTES,
            retention_days: DEFAULT_RETENTION_DAYS,
        }
    }
}

impl AuditConfig {
    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<(), AuditError> {
        self.validate_with_min_retention(MIN_RETENTION_DAYS)
    }

    fn validate_with_min_retention(&self, min_retention_days: u32) -> Result<(), AuditError> {
        if self.seal_every_records == 0 {
            return Err(AuditError::Config(
                "seal_every_records is 0; use 1 or more (1 seals after every record)".into(),
            ));
        }
        if self.seal_every_seconds == 0 {
            return Err(AuditError::Config("seal_every_seconds is 0; use 1 or more".into()));
        }
        if self.rotate_bytes < MIN_ROTATE_BYTES {
            return Err(AuditError::Config(format!(
                "rotate_bytes is {}; use at least {MIN_ROTATE_BYTES}",
                self.rotate_bytes
            )));
        }
        if self.retention_days < min_retention_days.max(1) {
            return Err(AuditError::Config(format!(
                "retention_days is {}, but audit logs must be kept at least {MIN_RETENTION_DAYS} days (three years and a day) so auditors can look three years back; set retention_days = {DEFAULT_RETENTION_DAYS} or more in [audit]",
                self.retention_days
            )));
        }
        Ok(())
    }
}

/// The time source for record timestamps and seal and retention periods.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// Who writes the log, as recorded in every [`Event::LogOpened`].
#[derive(Debug, Clone)]
pub struct LogIdentity {
    /// The party's certificate (DER), issued by the brand CA; it certifies the signing key.
    pub certificate_der: Vec<u8>,
    /// The party's role string (certificate OU).
    pub role: String,
    /// The party's organisation (certificate O).
    pub organisation: String,
    /// The writing software and version, e.g. `fedcrm 0.1.0`.
    pub software: String,
}

/// Where and what [`AuditLog::append`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's time (ms since the Unix epoch).
    pub time_ms: u64,
    /// The head after the record: SHA-256 of its line.
    pub head: [u8; 32],
}

/// A party's log head signed with its certified key: the cross-party receipt.
/// The signature is over [`crate::head_payload`]`(party, seq, time_ms, head)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    /// The party whose log this is (its certificate's CN).
    pub party: String,
    /// The sequence number of the party's last record.
    pub seq: u64,
    /// The time of that record (ms since the Unix epoch), as the party wrote it.
    pub time_ms: u64,
    /// The head after that record.
    pub head: [u8; 32],
    /// ECDSA P-256 / SHA-256, ASN.1 DER.
    pub signature: Vec<u8>,
}

impl SignedHead {
    /// Checks that `cert_der` names [`SignedHead::party`] and that its key made the
    /// signature. Check the certificate itself first (mutual TLS or `pki::verify_cert`).
    pub fn verify(&self, cert_der: &[u8]) -> Result<(), AuditError> {
        let identity = pki::identity_from_cert(cert_der)?;
        if identity.name != self.party {
            return Err(AuditError::BadHead {
                party: self.party.clone(),
                seq: self.seq,
                reason: format!("the certificate given is {}'s, not {}'s", identity.name, self.party),
            });
        }
        let payload = head_payload(&self.party, self.seq, self.time_ms, &self.head);
        pki::verify_signature(cert_der, &payload, &self.signature).map_err(|_| AuditError::BadHead {
            party: self.party.clone(),
            seq: self.seq,
            reason: "the signature does not verify with the party's certificate; discard the message".into(),
        })
    }

    /// The signed head of `party` as a message carried it.
    pub fn from_wire(party: impl Into<String>, r: &Receipt) -> Self {
        SignedHead { party: party.into(), seq: r.seq, time_ms: r.time_ms, head: r.head, signature: r.signature.clone() }
    }

    /// The [`Event::Receipt`] the receiving party appends to its own log.
    pub fn receipt(&self) -> Event {
        Event::Receipt {
            peer: self.party.clone(),
            peer_seq: self.seq,
            peer_head: hex::encode(self.head),
            peer_time_ms: self.time_ms,
            signature_hex: hex::encode(&self.signature),
            message: String::new(),
            bytes: 0,
            sha256: String::new(),
        }
    }
}

/// The wire form, to attach to a message.
impl From<SignedHead> for Receipt {
    fn from(s: SignedHead) -> Self {
        Receipt { seq: s.seq, time_ms: s.time_ms, head: s.head, signature: s.signature }
    }
}

/// Everything that can go wrong writing or reading an audit log. Messages are
/// lower-case, say what to do, and never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Another process holds this log directory: two writers would interleave
    /// records and the log would read as tampered.
    #[error(
        "audit log {dir} is in use by another process{}; run one process per audit directory (stop the other, or give this one its own `audit_dir`)",
        holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
    )]
    InUse {
        /// The log directory.
        dir: PathBuf,
        /// What the lock file says about its holder, e.g. `pid 4242`.
        holder: Option<String>,
    },
    /// The configuration is out of range.
    #[error("audit config: {0}")]
    Config(String),
    /// The operating system refused a read or write.
    #[error("audit log {path}: {error}; check that the directory exists, is writable and the disk is not full")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },
    /// The directory already holds another party's log.
    #[error("{dir} holds the audit log of {found}, not of {expected}; give each party its own audit directory")]
    PartyMismatch {
        /// The log directory.
        dir: PathBuf,
        /// The party named by its last record.
        found: String,
        /// The party opening it.
        expected: String,
    },
    /// An existing log cannot be continued (or read) because a complete record is damaged.
    #[error(
        "{}{}: {reason}; run `fedcrm audit verify` on the log directory and keep the damaged file for the auditors",
        file.display(),
        line.map(|l| format!(":{l}")).unwrap_or_default()
    )]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// The 1-based line, when known.
        line: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// The signing key and certificate do not belong together or to this party.
    #[error("audit identity: {0}")]
    Identity(String),
    /// The PKI refused a certificate or the signer failed.
    #[error("audit signing: {0}")]
    Pki(#[from] PkiError),
    /// A signed head from a peer does not verify.
    #[error("signed head of {party} for record {seq} rejected: {reason}")]
    BadHead {
        /// The party the head claims to be from.
        party: String,
        /// The sequence number it claims.
        seq: u64,
        /// Why it was rejected.
        reason: String,
    },
    /// A record could not be serialised (a bug).
    #[error("could not serialise an audit record ({0}); this is a bug, report it")]
    Serialize(String),
    /// An earlier write or fsync failed; the file may end with a torn record.
    #[error(
        "an earlier write to {} failed, so the log may end with a torn record; reopen the audit log (it sets the torn record aside and logs that) before writing again",
        path.display()
    )]
    Poisoned {
        /// The file being written.
        path: PathBuf,
    },
    /// The benchmark could not run.
    #[error("audit benchmark: {0}")]
    Bench(String),
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |error| AuditError::Io { path: path.to_path_buf(), error }
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

/// The lock file that makes a log directory one process's: an exclusive OS lock
/// (released by the OS when the process ends, however it ends), and the holder's pid
/// written inside for the error another process reports.
pub(crate) const LOCK_FILE: &str = ".lock";

fn lock_dir(dir: &Path) -> Result<File, AuditError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = text.lines().next().map(str::trim).filter(|t| !t.is_empty()).map(str::to_string);
            return Err(AuditError::InUse { dir: dir.to_path_buf(), holder });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_error(&path)(e)),
    }
    file.set_len(0).map_err(io_error(&path))?;
    file.rewind().map_err(io_error(&path))?;
    writeln!(file, "pid {}", std::process::id()).map_err(io_error(&path))?;
    Ok(file)
}

/// The name of log file number `n`.
pub(crate) fn file_name(n: u64) -> String {
    format!("audit-{n:06}.log")
}

/// The number in a log file name, if it is one.
pub(crate) fn file_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".log")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The log files in `dir`, ordered by number.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if let Some(n) = entry.file_name().to_str().and_then(file_number) {
            files.push((n, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// The log files named by `path`: a directory's `audit-*.log` files in order, or the
/// single file given.
pub(crate) fn files_of(path: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let meta = fs::metadata(path).map_err(io_error(path))?;
    if meta.is_dir() {
        Ok(list_files(path)?.into_iter().map(|(_, p)| p).collect())
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// Splits a file's bytes into lines: `(line without '\n', ends with '\n')`. The only
/// line that can lack its newline is the last one.
pub(crate) fn lines(bytes: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = &rest[..i];
                rest = &rest[i + 1..];
                Some((line, true))
            }
            None => {
                let line = rest;
                rest = &[];
                Some((line, false))
            }
        }
    })
}

/// Whether the bytes after a file's last newline look like what a crash leaves: a
/// prefix of a record line (possibly all of it but the newline), maybe followed by
/// zero bytes a power loss can leave in a file's last block. Anything else (a
/// complete record followed by stray bytes, a syntax error before the end) was not
/// written by an interrupted writer.
pub(crate) fn is_crash_tail(torn: &[u8]) -> bool {
    let end = torn.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let torn = &torn[..end];
    if torn.is_empty() {
        return true;
    }
    match serde_json::from_slice::<Record>(torn) {
        Ok(_) => true,
        Err(e) => e.is_eof(),
    }
}

/// Reads the end of a file: from `offset` to the end, holding at least the last three
/// newlines (or starting at the beginning of the file).
fn read_tail(file: &mut File, path: &Path) -> Result<(u64, Vec<u8>), AuditError> {
    let len = file.metadata().map_err(io_error(path))?.len();
    let mut want = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(want);
        file.seek(SeekFrom::Start(start)).map_err(io_error(path))?;
        let mut buf = Vec::new();
        std::io::Read::by_ref(file).take(len - start).read_to_end(&mut buf).map_err(io_error(path))?;
        if start == 0 || buf.iter().filter(|&&b| b == b'\n').count() >= 3 {
            return Ok((start, buf));
        }
        want = want.saturating_mul(4);
    }
}

/// The end of one log file, as found when opening or applying retention.
struct Tail {
    /// Length of the file up to and including its last good line's newline.
    keep: u64,
    /// The bytes after `keep` to set aside (a torn or unparseable last line).
    torn: Vec<u8>,
    /// The last complete record and the hash of its line.
    last: Option<(Record, [u8; 32])>,
}

/// Reads a file's last record. With `recover`, a last line without its newline, or a
/// complete last line that does not parse, is reported in `torn` instead of failing.
fn scan_tail(path: &Path, recover: bool) -> Result<Tail, AuditError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let (start, buf) = read_tail(&mut file, path)?;
    let corrupt = |reason: String| AuditError::Corrupt { file: path.to_path_buf(), line: None, reason };
    // Ends of the lines in `buf` (index just past each '\n').
    let ends: Vec<usize> = buf.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1).collect();
    let keep = ends.last().copied().unwrap_or(0);
    if keep < buf.len() && !recover {
        return Err(corrupt("the last line is incomplete, but this is not the newest log file".into()));
    }
    // Line i spans ends[i-1]..ends[i] (ends[-1] = 0, which is the file start or a cut).
    let line_at = |k: usize| -> &[u8] {
        let begin = if k == 0 { 0 } else { ends[k - 1] };
        &buf[begin..ends[k] - 1]
    };
    let complete = ends.len();
    if complete > 0 && (start == 0 || complete >= 2) {
        // A complete (newline-terminated) last line that does not parse is not a crash
        // (the writer never leaves one): it is not set aside, and opening fails below,
        // so the evidence stays for `fedcrm audit verify` to report.
    }
    let torn = buf[keep..].to_vec();
    let last = if complete > 0 && (start == 0 || complete >= 2) {
        let line = line_at(complete - 1);
        let record = serde_json::from_slice::<Record>(line)
            .map_err(|e| corrupt(format!("the last complete record does not parse ({e})")))?;
        Some((record, line_hash(line)))
    } else {
        None
    };
    Ok(Tail { keep: start + keep as u64, torn, last })
}

fn open_append(path: &Path, create_new: bool) -> Result<File, AuditError> {
    let mut options = OpenOptions::new();
    options.append(true);
    if create_new {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).map_err(io_error(path))
}

/// Makes a file creation or deletion in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

// ---------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------

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
    /// retention period under [`MIN_RETENTION_DAYS`].
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
    /// [`MIN_RETENTION_DAYS`].
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
