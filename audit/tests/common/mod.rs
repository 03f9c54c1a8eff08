//! Shared fixtures: a real brand CA, certified parties, a test clock, and helpers to
//! read, edit and re-sign log files the way an attacker with write access could.
#![allow(dead_code)]

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fedcrm_audit::log::{AuditConfig, AuditLog, Clock, LogIdentity};
use fedcrm_audit::verify::{VerifyFailure, VerifyOptions, VerifyReport, verify_paths_with};
use fedcrm_audit::{Event, GENESIS, Record, head_payload, line_hash};
use fedcrm_pki::{self as pki, CaMaterial, Identity, OrgKind, PrivateKeyPem, Role, SigningKey, Validity};
use time::macros::datetime;

pub const MS_PER_DAY: u64 = 86_400_000;

/// Where every [`TestClock`] starts: late on the last day of a month, so a test that
/// moves a day or two crosses into the next month (and year-end tests can move to
/// 31 December). Fixed, so no test depends on the real date.
pub fn start_ms() -> u64 {
    (datetime!(2026-11-30 22:00 UTC).unix_timestamp() * 1000) as u64
}

/// A clock the test moves by hand, starting at [`start_ms`]. Certificates from
/// [`Brand`] are valid from 30 days before that until 2,000 days after.
#[derive(Debug)]
pub struct TestClock(AtomicU64);

impl TestClock {
    pub fn new() -> Arc<Self> {
        Self::at(start_ms())
    }
    pub fn at(ms: u64) -> Arc<Self> {
        Arc::new(TestClock(AtomicU64::new(ms)))
    }
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn advance_days(&self, days: u64) {
        self.advance_ms(days * MS_PER_DAY);
    }
    /// Sets the clock (backwards too: a clock stepped back, or an attacker's).
    pub fn set_ms(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

/// Verifies with `clock`'s time as the verifier's "now".
pub fn verify(paths: &[PathBuf], ca_der: &[u8], clock: &TestClock) -> Result<VerifyReport, VerifyFailure> {
    verify_paths_with(paths, ca_der, VerifyOptions::at(clock.now_ms()))
}

/// [`verify`] for logs written with [`Party::open_short_retention`]: the verifier
/// accepts the 1-day retention period they state.
pub fn verify_short_retention(
    paths: &[PathBuf],
    ca_der: &[u8],
    clock: &TestClock,
) -> Result<VerifyReport, VerifyFailure> {
    verify_paths_with(paths, ca_der, VerifyOptions { min_retention_days: 1, ..VerifyOptions::at(clock.now_ms()) })
}

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A brand CA.
pub struct Brand {
    pub ca: CaMaterial,
    pub ca_der: Vec<u8>,
}

impl Brand {
    pub fn new() -> Self {
        // The CA outlives every certificate below whatever the real date (its own
        // validity is not checked: it is the trust anchor).
        let ca = pki::ca_init("brand", pki::MAX_VALIDITY_DAYS).unwrap();
        let ca_der = pki::pem_to_der_certs(&ca.cert_pem).unwrap().remove(0);
        Brand { ca, ca_der }
    }

    pub fn party(&self, name: &str, role: Role) -> Party {
        let id = Identity { name: name.into(), organisation: "Test Org".into(), role };
        let (key, csr) = pki::new_key_and_csr(&id).unwrap();
        let start = time::OffsetDateTime::from_unix_timestamp((start_ms() / 1000) as i64).unwrap();
        let validity =
            Validity { not_before: start - time::Duration::days(30), not_after: start + time::Duration::days(2000) };
        let (cert_pem, _) = pki::sign_csr(&self.ca, &csr, validity).unwrap();
        Party { name: name.into(), role, key, cert_der: pki::pem_to_der_certs(&cert_pem).unwrap().remove(0) }
    }

    pub fn node(&self, name: &str) -> Party {
        self.party(name, Role::Node(OrgKind::Franchisee))
    }

    pub fn coordinator(&self) -> Party {
        self.party("coordinator.brand", Role::Coordinator)
    }
}

/// A certified party.
pub struct Party {
    pub name: String,
    pub role: Role,
    pub key: PrivateKeyPem,
    pub cert_der: Vec<u8>,
}

impl Party {
    pub fn signer(&self) -> SigningKey {
        SigningKey::from_pem(&self.key).unwrap()
    }

    pub fn identity(&self) -> LogIdentity {
        LogIdentity {
            certificate_der: self.cert_der.clone(),
            role: self.role.as_str().into(),
            organisation: "Test Org".into(),
            software: "fedcrm test".into(),
        }
    }

    pub fn open(&self, dir: &Path, config: AuditConfig, clock: Arc<TestClock>) -> AuditLog {
        AuditLog::open(dir, &self.name, self.identity(), self.signer(), config, clock).unwrap()
    }

    /// Opens through the `test-util` hook that accepts a retention period under three years.
    pub fn open_short_retention(&self, dir: &Path, config: AuditConfig, clock: Arc<TestClock>) -> AuditLog {
        AuditLog::open_with_short_retention(dir, &self.name, self.identity(), self.signer(), config, clock).unwrap()
    }
}

/// An egress record of realistic size.
pub fn egress(i: u64) -> Event {
    Event::Egress {
        round: Some(format!("r-{i:04}")),
        analysis: Some("a-0001".into()),
        message: "masked-chunk".into(),
        bytes: 65_536 + i,
        sha256: hex::encode(line_hash(&i.to_be_bytes())),
    }
}

/// The rotation and retention tests' log: node `store-1.brand` writing to a temporary
/// directory with `config`, files rotated every [`ROTATE_BYTES`], the records of
/// [`egress`] over `records` appended.
pub struct RotatingLog {
    pub tmp: tempfile::TempDir,
    pub brand: Brand,
    pub node: Party,
    pub clock: Arc<TestClock>,
    pub log: AuditLog,
}

/// Small files, so a few dozen records rotate several times.
pub const ROTATE_BYTES: u64 = 4096;

impl RotatingLog {
    pub fn new(config: AuditConfig, records: Range<u64>) -> Self {
        Self::with(config, records, Party::open)
    }

    /// A log opened through [`Party::open_short_retention`] (`config` may state a period
    /// under three years).
    pub fn short_retention(config: AuditConfig, records: Range<u64>) -> Self {
        Self::with(config, records, Party::open_short_retention)
    }

    fn with(
        config: AuditConfig,
        records: Range<u64>,
        open: fn(&Party, &Path, AuditConfig, Arc<TestClock>) -> AuditLog,
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let brand = Brand::new();
        let node = brand.node("store-1.brand");
        let clock = TestClock::new();
        let mut log = open(&node, tmp.path(), AuditConfig { rotate_bytes: ROTATE_BYTES, ..config }, clock.clone());
        for i in records {
            log.append(egress(i)).unwrap();
        }
        RotatingLog { tmp, brand, node, clock, log }
    }
}

/// The log files of a directory, in order.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("audit-"))
        .collect();
    files.sort();
    files
}

/// A file's lines, each with its newline.
pub fn read_lines(path: &Path) -> Vec<Vec<u8>> {
    fs::read(path).unwrap().split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

pub fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    fs::write(path, lines.concat()).unwrap();
}

pub fn parse(line: &[u8]) -> Record {
    serde_json::from_slice(line.strip_suffix(b"\n").unwrap_or(line)).unwrap()
}

pub fn serialize(record: &Record) -> Vec<u8> {
    let mut line = serde_json::to_vec(record).unwrap();
    line.push(b'\n');
    line
}

/// Rewrites a single-file log after `edit`: recomputes every `prev` and re-signs every
/// seal with the party's own key, so the log verifies on its own.
pub fn resign(path: &Path, signer: &SigningKey, edit: impl FnOnce(&mut Vec<Record>)) {
    resign_from(path, signer, 0, edit);
}

/// Like [`resign`], but seals before line index `first` are left as they are (an
/// attacker without the key keeps the seals it cannot make).
pub fn resign_from(path: &Path, signer: &SigningKey, first: usize, edit: impl FnOnce(&mut Vec<Record>)) {
    let mut records: Vec<Record> = read_lines(path).iter().map(|l| parse(l)).collect();
    edit(&mut records);
    let first_prev = records[0].prev.clone();
    let mut head: Option<[u8; 32]> = None;
    let mut prev_time = 0;
    let mut out = Vec::new();
    for (index, mut record) in records.into_iter().enumerate() {
        record.prev = match head {
            None => first_prev.clone(),
            Some(h) => hex::encode(h),
        };
        if let (true, Event::Seal { upto_seq, head: seal_head, signature_hex }) = (index >= first, &mut record.event) {
            let h = head.unwrap();
            *upto_seq = record.seq - 1;
            *seal_head = hex::encode(h);
            let payload = head_payload(&record.party, record.seq - 1, prev_time, &h);
            *signature_hex = hex::encode(signer.sign(&payload).unwrap());
        }
        let line = serialize(&record);
        head = Some(line_hash(&line[..line.len() - 1]));
        prev_time = record.time_ms;
        out.push(line);
    }
    assert_eq!(GENESIS.len(), 64);
    write_lines(path, &out);
}

/// Asserts a failure names `file` and one of `lines`.
#[track_caller]
pub fn assert_at(failure: &VerifyFailure, file: &Path, lines: &[u64]) {
    assert_eq!(failure.file, file, "{failure}");
    assert!(failure.line.is_some_and(|l| lines.contains(&l)), "expected line {lines:?}: {failure}");
}

/// Two parties talking: node `store-1.brand` (A) sends `messages` egress records, each
/// carrying its signed head, which the coordinator (B) logs as a receipt and answers
/// with its own signed head, which A logs. At the end A seals, and B logs a receipt of
/// A's final head, so every record of A is covered by B.
pub struct TwoParty {
    pub tmp: tempfile::TempDir,
    pub brand: Brand,
    pub a: Party,
    pub b: Party,
    pub a_dir: PathBuf,
    pub b_dir: PathBuf,
    /// The sequence numbers of A's heads that B holds receipts for.
    pub receipted: Vec<u64>,
    pub clock: Arc<TestClock>,
}

impl TwoParty {
    pub fn new(messages: u64, config: AuditConfig) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let brand = Brand::new();
        let a = brand.node("store-1.brand");
        let b = brand.coordinator();
        let a_dir = tmp.path().join("a");
        let b_dir = tmp.path().join("b");
        let clock = TestClock::new();
        let mut la = a.open(&a_dir, config, clock.clone());
        let mut lb = b.open(&b_dir, config, clock.clone());
        let mut receipted = Vec::new();
        for i in 0..messages {
            la.append(egress(i)).unwrap();
            let head = la.signed_head().unwrap();
            head.verify(&a.cert_der).unwrap();
            receipted.push(head.seq);
            lb.append(head.receipt()).unwrap();
            let ack = lb.signed_head().unwrap();
            ack.verify(&b.cert_der).unwrap();
            la.append(ack.receipt()).unwrap();
            clock.advance_ms(100);
        }
        la.seal().unwrap();
        let head = la.signed_head().unwrap();
        receipted.push(head.seq);
        lb.append(head.receipt()).unwrap();
        lb.seal().unwrap();
        TwoParty { tmp, brand, a, b, a_dir, b_dir, receipted, clock }
    }

    pub fn both(&self) -> Vec<PathBuf> {
        vec![self.a_dir.clone(), self.b_dir.clone()]
    }

    /// Verifies `paths` at the scenario's clock.
    pub fn verify(&self, paths: &[PathBuf]) -> Result<VerifyReport, VerifyFailure> {
        verify(paths, &self.brand.ca_der, &self.clock)
    }

    pub fn a_file(&self) -> PathBuf {
        files(&self.a_dir).remove(0)
    }
}
