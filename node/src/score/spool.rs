//! The audit record of a scoring run: `Event::LocalScoring { model, version,
//! customers }` in the node's own audit log — that scoring happened and with which
//! model, never what it found.
//!
//! The running node daemon holds an exclusive lock on its audit log, and a second
//! writer would break the chain. So `fedcrm node score` appends directly only when the
//! log is free; while the daemon runs it leaves the record in the **scoring spool**,
//! the directory `scoring-spool` beside the audit directory
//! (`<audit_dir>/../scoring-spool/<millis>-<pid>-<model id>.json`, mode 0600), and the daemon
//! appends spooled records to its log and deletes their files at start-up and on
//! every seal tick of a session (`audit.seal_every_seconds`, and as each session
//! with the coordinator opens; a node that cannot reach HQ takes them in once it does,
//! or at its next start). A spool file names its node; a
//! daemon takes in only its own node's files, and only `LocalScoring` records (a
//! spool file cannot put any other event into the log); a file it cannot parse is set
//! aside as `*.rejected`. A crash between the append
//! and the deletion records a scoring twice, never not at all.

use std::path::{Path, PathBuf};

use fedcrm_audit::Event;
use fedcrm_audit::log::{AuditError, AuditLog};
use serde::{Deserialize, Serialize};

use super::ScoreError;
use crate::config::NodeConfig;

/// How the audit log took a scoring record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "how")]
pub enum Recorded {
    /// Appended to the log, as record `seq`.
    Appended { seq: u64 },
    /// The node daemon holds the log: spooled here for it to append.
    Spooled { path: PathBuf },
}

/// A spooled scoring record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spooled {
    /// The node whose log it belongs in.
    pub node: String,
    pub model: String,
    pub version: String,
    pub customers: u64,
    /// When the scoring ran (ms since the epoch); the record's own time is when the
    /// daemon appends it.
    pub scored_ms: u64,
}

impl Spooled {
    fn event(&self) -> Event {
        Event::LocalScoring { model: self.model.clone(), version: self.version.clone(), customers: self.customers }
    }
}

/// The scoring spool of the node whose audit directory is `audit_dir`.
pub fn dir(audit_dir: &Path) -> PathBuf {
    audit_dir.parent().unwrap_or(Path::new(".")).join("scoring-spool")
}

/// The record of scoring `customers` customers with model `model_id` (`churn-v3` is
/// recorded as model `churn`, version `3`; an id not of that form as itself with no
/// version).
pub fn scoring(node: &str, model_id: &str, customers: u64, scored_ms: u64) -> Spooled {
    let (model, version) = match fedcrm_protocol::model::split_id(model_id) {
        Some((name, v)) => (name.to_string(), v.to_string()),
        None => (model_id.to_string(), String::new()),
    };
    Spooled { node: node.to_string(), model, version, customers, scored_ms }
}

/// Record a scoring in `cfg`'s audit log: appended and sealed when the log is free,
/// spooled for the running daemon when it holds the log.
pub fn record(cfg: &NodeConfig, model_id: &str, customers: u64) -> Result<Recorded, ScoreError> {
    let entry = scoring(&cfg.name, model_id, customers, crate::session::unix_now_ms());
    let m = cfg.tls.read().map_err(|e| ScoreError::Identity(e.to_string()))?;
    let cert_der = fedcrm_pki::pem_to_der_certs(&m.cert_pem)
        .map_err(|e| ScoreError::Identity(format!("{}: {e}", cfg.tls.cert.display())))?
        .into_iter()
        .next()
        .ok_or_else(|| ScoreError::Identity(format!("{} holds no certificate", cfg.tls.cert.display())))?;
    match crate::session::open_log(cfg, cert_der, &m.key) {
        Ok(mut log) => {
            let appended = log.append(entry.event()).map_err(ScoreError::Audit)?;
            log.seal().map_err(ScoreError::Audit)?;
            Ok(Recorded::Appended { seq: appended.seq })
        }
        Err(AuditError::InUse { .. }) => write(&dir(&cfg.audit_dir), &entry).map(|path| Recorded::Spooled { path }),
        Err(e) => Err(ScoreError::Audit(e)),
    }
}

/// Leave `entry` in the spool `dir` (created if need be): written under a temporary
/// name, then renamed, so the daemon never reads half a file.
pub fn write(dir: &Path, entry: &Spooled) -> Result<PathBuf, ScoreError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |error| ScoreError::Spool { path, error }
    };
    std::fs::create_dir_all(dir).map_err(failed(dir))?;
    let version = if entry.version.is_empty() { String::new() } else { format!("-v{}", entry.version) };
    let stem = format!("{}-{}-{}{version}", entry.scored_ms, std::process::id(), entry.model);
    let path = dir.join(format!("{stem}.json"));
    let tmp = dir.join(format!(".{stem}.tmp"));
    // Unwrap safety: a struct of strings and integers always serialises.
    let bytes = serde_json::to_vec_pretty(entry).unwrap();
    fedcrm_pki::write_private_file(&tmp, &bytes)
        .map_err(|e| ScoreError::Spool { path: tmp.clone(), error: std::io::Error::other(e.to_string()) })?;
    std::fs::rename(&tmp, &path).map_err(failed(&path))?;
    Ok(path)
}

/// Append every scoring record spooled in `dir` for `node` to `log` (oldest first)
/// and delete its file. A file naming another node is left for that node; one that
/// cannot be read or parsed is renamed `*.rejected` with a warning and never
/// appended. Only a failure of the audit log itself is an error.
pub fn ingest(dir: &Path, node: &str, log: &mut AuditLog) -> Result<usize, AuditError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            tracing::warn!(spool = %dir.display(), error = %e, "cannot read the scoring spool");
            return Ok(0);
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut taken = 0;
    for path in files {
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Spooled>(&b).map_err(|e| e.to_string()));
        match parsed {
            Ok(entry) if entry.node == node => {
                log.append(entry.event())?;
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "spooled scoring recorded, but its file stays");
                }
                taken += 1;
            }
            // Two nodes whose audit directories share a parent share a spool: the
            // other node takes in its own files.
            Ok(entry) => {
                tracing::debug!(file = %path.display(), for_node = %entry.node, "spooled scoring of another node")
            }
            Err(e) => {
                // Set aside once, so it is not read (and warned about) at every tick.
                let aside = path.with_extension("rejected");
                tracing::warn!(file = %path.display(), error = %e, aside = %aside.display(), "unreadable spooled scoring set aside, not recorded");
                let _ = std::fs::rename(&path, &aside);
            }
        }
    }
    Ok(taken)
}
