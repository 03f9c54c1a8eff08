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

use std::io;
use std::path::{Path, PathBuf};

use fedcrm_pki::{self as pki, PkiError, Receipt};
use serde::{Deserialize, Serialize};

use crate::head_payload;
use crate::record::Event;

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

mod files;
mod writer;

pub(crate) use files::{file_number, files_of, is_crash_tail, lines, list_files};
pub use writer::{AuditLog, SharedLog, lock, read_records};
