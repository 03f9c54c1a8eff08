//! The auditor's and franchisee's audit commands: `fedcrm audit verify|report`,
//! `fedcrm node pending|approve`, the CA's issuance log and `fedcrm bench audit`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use fedcrm_audit::Event;
use fedcrm_audit::log::{AuditLog, LogIdentity, SystemClock, read_records};
use fedcrm_audit::{report, verify};
use fedcrm_node::approvals::{Approvals, when};
use fedcrm_node::config::NodeConfig;
use fedcrm_pki::{self as pki, CaMaterial, Identity, SigningKey};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn first_der(pem: &str, what: &str) -> Result<Vec<u8>> {
    pki::pem_to_der_certs(pem)?.into_iter().next().with_context(|| format!("{what} holds no certificate"))
}

/// `fedcrm ca sign` records every issuance in the CA's own audit log (`CA_DIR/audit`),
/// sealed with the CA key, before the certificate is handed out.
pub fn log_issuance(ca_dir: &Path, ca: &CaMaterial, cert_pem: &str, id: &Identity) -> Result<()> {
    let x509 = first_der(cert_pem, "the issued certificate")?;
    let mut log = ca_log(ca_dir, ca)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &x509);
    let (serial, not_after) = cert_facts(&x509);
    log.append(Event::CertificateIssued {
        name: id.name.clone(),
        organisation: id.organisation.clone(),
        role: id.role.as_str().into(),
        serial_hex: serial,
        not_after,
        sha256: hex::encode(digest.as_ref()),
    })?;
    log.seal()?;
    Ok(())
}

/// The CA's material in `ca_dir` (`ca.pem`, `ca.key`).
pub fn read_ca(ca_dir: &Path) -> Result<CaMaterial> {
    Ok(CaMaterial {
        cert_pem: std::fs::read_to_string(ca_dir.join("ca.pem"))
            .with_context(|| format!("reading {}/ca.pem", ca_dir.display()))?,
        key: pki::PrivateKeyPem::new(
            std::fs::read_to_string(ca_dir.join("ca.key"))
                .with_context(|| format!("reading {}/ca.key", ca_dir.display()))?,
        ),
    })
}

/// `fedcrm ca revoke`: adds `cert_path`'s serial to the CA's revocation list and
/// writes `CA_DIR/crl.pem` (signed by the CA key, every earlier entry kept), after
/// recording the revocation in the CA's audit log. The file is replaced whole
/// (written beside it, then renamed), so a coordinator reloading it never reads
/// half a list.
pub fn revoke(ca_dir: &Path, cert_path: &Path, reason: pki::crl::Reason) -> Result<pki::crl::Issued> {
    let ca = read_ca(ca_dir)?;
    let crl_path = ca_dir.join("crl.pem");
    let current = match std::fs::read_to_string(&crl_path) {
        Ok(pem) => Some(pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", crl_path.display())),
    };
    let cert_pem = std::fs::read_to_string(cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
    let issued = pki::crl::revoke(&ca, current.as_deref(), &cert_pem, reason, time::OffsetDateTime::now_utc())
        .with_context(|| format!("revoking {}", cert_path.display()))?;
    let mut log = ca_log(ca_dir, &ca)?;
    log.append(Event::CertificateRevoked {
        name: issued.identity.name.clone(),
        organisation: issued.identity.organisation.clone(),
        serial_hex: issued.revoked.serial_hex.clone(),
        reason: issued.revoked.reason.to_string(),
        crl_number: issued.crl_number,
    })?;
    log.seal()?;
    let tmp = ca_dir.join("crl.pem.new");
    std::fs::write(&tmp, &issued.crl_pem).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &crl_path).with_context(|| format!("replacing {}", crl_path.display()))?;
    Ok(issued)
}

/// The CA's own audit log (`CA_DIR/audit`), sealed with the CA key.
fn ca_log(ca_dir: &Path, ca: &CaMaterial) -> Result<AuditLog> {
    let ca_der = first_der(&ca.cert_pem, "ca.pem")?;
    let identity = LogIdentity {
        certificate_der: ca_der,
        role: fedcrm_audit::CA_PARTY.into(),
        organisation: brand_of(&ca.cert_pem),
        software: fedcrm_protocol::SOFTWARE.into(),
    };
    let log = AuditLog::open(
        &ca_dir.join("audit"),
        fedcrm_audit::CA_PARTY,
        identity,
        SigningKey::from_pem(&ca.key)?,
        Default::default(),
        Arc::new(SystemClock),
    )
    .with_context(|| format!("opening the CA's audit log in {}", ca_dir.join("audit").display()))?;
    Ok(log)
}

/// The brand (subject O) of the CA certificate.
fn brand_of(ca_pem: &str) -> String {
    use x509_parser::prelude::FromDer;
    let Ok(der) = first_der(ca_pem, "ca.pem") else { return String::new() };
    match x509_parser::certificate::X509Certificate::from_der(&der) {
        Ok((_, c)) => c.subject().iter_organization().next().and_then(|o| o.as_str().ok()).unwrap_or("").to_string(),
        Err(_) => String::new(),
    }
}

fn cert_facts(der: &[u8]) -> (String, String) {
    use x509_parser::prelude::FromDer;
    match x509_parser::certificate::X509Certificate::from_der(der) {
        Ok((_, c)) => (hex::encode(c.raw_serial()), c.validity().not_after.to_string()),
        Err(_) => (String::new(), String::new()),
    }
}

fn ca_der(ca: &Path) -> Result<Vec<u8>> {
    let pem =
        std::fs::read_to_string(ca).with_context(|| format!("reading the brand CA certificate {}", ca.display()))?;
    first_der(&pem, &ca.display().to_string())
}

/// `fedcrm audit verify`.
pub fn verify(paths: &[PathBuf], ca: &Path, json: bool) -> Result<()> {
    let ca = ca_der(ca)?;
    match verify::verify_paths(paths, &ca) {
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "ok": true, "report": r }))?);
            } else {
                for l in &r.logs {
                    println!(
                        "ok  {:<28} {} record(s) (seq {}..={}) in {} file(s), {} seal(s){}",
                        l.party,
                        l.records,
                        l.first_seq,
                        l.last_seq,
                        l.files,
                        l.seals,
                        if l.unsealed_tail > 0 {
                            format!(", {} after the last seal", l.unsealed_tail)
                        } else {
                            String::new()
                        }
                    );
                    if let Some(t) = &l.torn_tail {
                        println!(
                            "    note: {}:{}: the last record is torn ({} bytes) — the writing process stopped mid-record (a crash, not tampering); everything before it verifies",
                            t.file.display(),
                            t.line,
                            t.bytes
                        );
                    }
                }
                println!("{} cross-party receipt(s) checked", r.receipts_checked);
            }
            Ok(())
        }
        Err(f) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "ok": false, "failure": f }))?);
            }
            bail!("audit verification FAILED: {f}")
        }
    }
}

fn parse_day(s: &str) -> Result<time::Date> {
    fedcrm_analysis::date::parse_date(s).map_err(|e| anyhow::anyhow!("{e}"))
}

/// `fedcrm audit report`.
pub fn report(
    paths: &[PathBuf],
    ca: &Path,
    from: &str,
    to: &str,
    html: bool,
    json: bool,
    out: Option<&Path>,
) -> Result<()> {
    let (from, to) = (parse_day(from)?, parse_day(to)?);
    if to < from {
        bail!("--to {to} is before --from {from}");
    }
    let ca = ca_der(ca)?;
    let verified =
        verify::verify_paths(paths, &ca).map_err(|f| anyhow::anyhow!("the logs do not verify, so no report: {f}"))?;
    let line = format!(
        "{} log(s) verified: hash chains, seals by certified keys, {} cross-party receipt(s)",
        verified.logs.len(),
        verified.receipts_checked
    );
    let logs = paths
        .iter()
        .map(|p| read_records(p).with_context(|| format!("reading {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let r = report::build(&logs, from, to, Some(line));
    let text = if json {
        serde_json::to_string_pretty(&r)? + "\n"
    } else if html {
        report::html(&r)
    } else {
        report::markdown(&r)
    };
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

/// `fedcrm node pending`.
pub fn pending(cfg: &NodeConfig, json: bool) -> Result<()> {
    let list = Approvals::new(&cfg.approvals_dir).pending(now_ms())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no requests are waiting for approval");
    }
    for p in list {
        println!("request {}", p.id);
        println!("  analysis:       {} (reference date {})", p.analysis, p.reference_date);
        if !p.computation.is_empty() {
            println!("  computes:       {}", p.computation);
        }
        println!("  requested by:   {} ({})", p.requested_by, p.requested_by_organisation);
        println!("  purpose:        {}", p.purpose);
        println!("  asked at:       {}", when(p.requested_ms));
        println!("  expires at:     {}", when(p.expires_ms));
        println!("  approve with:   fedcrm node approve {}", p.id);
    }
    Ok(())
}

/// `fedcrm node approve`.
pub fn approve(cfg: &NodeConfig, id: &str, by: &str) -> Result<()> {
    let ok = Approvals::new(&cfg.approvals_dir).approve(id, by, now_ms(), cfg.policy.approval_valid_seconds)?;
    println!(
        "approved {} by {}; valid until {} — the node takes part from the next round HQ sends (recorded in its audit log)",
        ok.id,
        ok.by,
        when(ok.valid_until_ms)
    );
    Ok(())
}

/// `fedcrm bench audit`.
pub fn bench(records: u64, json: bool) -> Result<()> {
    let f = verify::bench(records)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&f)?);
        return Ok(());
    }
    println!("fedcrm bench audit — measured, never asserted");
    println!(
        "  log of {} records, {:.1} MiB (written in {:.2} s)",
        f.records,
        f.bytes as f64 / 1048576.0,
        f.write_seconds
    );
    println!("  floor: reading the same files and SHA-256 over every line, same run");
    println!();
    println!("{:<34} {:>12} {:>16}", "", "seconds", "records/s");
    println!("{:<34} {:>12.3} {:>16.0}", "audit verify (chain, seals, parse)", f.verify_seconds, f.records_per_second);
    println!("{:<34} {:>12.3} {:>16.0}", "floor (read + SHA-256)", f.floor_seconds, f.floor_records_per_second);
    println!("ratio {:.2}×", f.ratio);
    Ok(())
}
