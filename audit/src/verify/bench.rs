//! The benchmark behind `fedcrm bench audit`: write a log, verify it, and time the floor.

use super::*;

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
