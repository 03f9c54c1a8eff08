//! The node's TOML configuration. Every key is documented in `configs/node.toml`
//! and the README; unknown keys are an error so a typo never silently weakens policy.

use std::path::{Path, PathBuf};

pub use fedcrm_protocol::config::{ConfigError, TlsFiles};
use fedcrm_protocol::config::{load_toml, resolve};

use serde::{Deserialize, Serialize};

pub use fedcrm_audit::log::AuditConfig;

use crate::data::DataConfig;
use crate::policy::Policy;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name; must equal the CN of its certificate.
    pub name: String,
    pub coordinator: CoordinatorEndpoint,
    pub tls: TlsFiles,
    pub data: DataConfig,
    #[serde(default)]
    pub policy: Policy,
    /// The node's tamper-evident audit log (every egress, decision and receipt).
    pub audit_dir: PathBuf,
    /// Where manual-approval requests wait (`fedcrm node pending` / `approve`).
    #[serde(default = "default_approvals_dir")]
    pub approvals_dir: PathBuf,
    /// Audit log sealing, rotation and retention.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Issue 11: which model publisher this node trusts (`fedcrm node score`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring: Option<crate::models::Scoring>,
    /// Issue 12: the identifier this node matches its customers on in private set
    /// intersection. TOML `[psi]`.
    #[serde(default)]
    pub psi: crate::psi::PsiConfig,
}

fn default_approvals_dir() -> PathBuf {
    PathBuf::from("approvals")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorEndpoint {
    /// e.g. `https://hq.example.com:7443`.
    pub url: String,
    /// The name the coordinator's certificate must carry (its SAN).
    pub server_name: String,
    /// Seconds to wait before the first reconnection attempt; each further failure
    /// doubles the wait (with jitter) up to `retry_max_seconds`.
    #[serde(default = "default_retry")]
    pub retry_seconds: u64,
    /// The longest wait between reconnection attempts.
    #[serde(default = "default_retry_max")]
    pub retry_max_seconds: u64,
}

fn default_retry() -> u64 {
    1
}

fn default_retry_max() -> u64 {
    60
}

impl CoordinatorEndpoint {
    /// The reconnect schedule these settings give.
    pub fn backoff(&self) -> crate::session::Backoff {
        let first = std::time::Duration::from_secs(self.retry_seconds.max(1));
        crate::session::Backoff { first, cap: std::time::Duration::from_secs(self.retry_max_seconds).max(first) }
    }
}

impl NodeConfig {
    /// Load and resolve relative paths against the config file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (mut c, base): (NodeConfig, _) = load_toml(path)?;
        c.tls.resolve(&base);
        if !c.data.path.as_os_str().is_empty() {
            resolve(&base, &mut c.data.path);
        }
        for p in [c.data.password_file.as_mut(), c.data.sslrootcert.as_mut()].into_iter().flatten() {
            resolve(&base, p);
        }
        resolve(&base, &mut c.audit_dir);
        resolve(&base, &mut c.approvals_dir);
        if let Some(p) = c.data.consent_withdrawals.as_mut() {
            resolve(&base, p);
        }
        c.policy.validate().map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })?;
        c.data.validate().map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })?;
        Ok(c)
    }
}
