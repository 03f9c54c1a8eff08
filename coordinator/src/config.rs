//! The coordinator's TOML configuration (see `configs/coordinator.toml`, every key
//! commented). Unknown keys are an error.

use std::path::{Path, PathBuf};

pub use fedcrm_audit::log::AuditConfig;

pub use fedcrm_protocol::config::{ConfigError, TlsFiles};
use fedcrm_protocol::config::{load_toml, resolve};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// The coordinator's name: CN and DNS SAN of its certificate; nodes check it.
    pub name: String,
    /// Address to listen on, e.g. `0.0.0.0:7443`.
    pub listen: String,
    pub tls: TlsFiles,
    /// Nodes allowed to connect: certificate CN and organisation must both match.
    #[serde(default)]
    pub enrolled: Vec<Enrolled>,
    #[serde(default)]
    pub release: ReleaseRules,
    #[serde(default)]
    pub rounds: RoundSettings,
    #[serde(default)]
    pub sessions: SessionSettings,
    #[serde(default)]
    pub secagg: SecaggSettings,
    /// The coordinator's tamper-evident audit log.
    pub audit_dir: PathBuf,
    /// Issue 11: the model registry (trained models, and their signatures once
    /// published). Default `models` beside the configuration file.
    #[serde(default = "default_models_dir")]
    pub models_dir: PathBuf,
    /// Audit log sealing, rotation and retention.
    #[serde(default)]
    pub audit: AuditConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolled {
    pub name: String,
    pub organisation: String,
}

/// Rules applied by the release door to every result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRules {
    /// Fewest nodes whose data must be in a result for it to be released. Default 3.
    #[serde(default = "default_min_participants")]
    pub min_participants: usize,
    /// Smallest count a released cell may show; smaller cells are suppressed. Default 10.
    #[serde(default = "default_min_cohort")]
    pub min_cohort: u64,
}

fn default_models_dir() -> PathBuf {
    PathBuf::from("models")
}

fn default_min_participants() -> usize {
    3
}
fn default_min_cohort() -> u64 {
    10
}

impl Default for ReleaseRules {
    fn default() -> Self {
        Self { min_participants: default_min_participants(), min_cohort: default_min_cohort() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundSettings {
    /// Seconds each phase waits for nodes before counting the missing ones as dropped. Default 30.
    #[serde(default = "default_timeout")]
    pub phase_timeout_seconds: u64,
    /// Words per masked-vector chunk. Default 65536 (512 KiB).
    #[serde(default = "default_chunk")]
    pub chunk_elements: u32,
    /// The most customers one node may hold: the per-node bound on every word of a
    /// count analysis (RFM histograms, segment counts), signed in each round start.
    /// Rounds use 32-bit words while invited nodes × this bound < 2^32, else 64-bit
    /// words (`fedcrm_analysis::width::pick_width`); a node holding more customers
    /// refuses the round and says to raise it. Default 4,194,304 (2^22): 32-bit words
    /// for up to 1,023 nodes.
    #[serde(default = "default_max_customers")]
    pub max_customers_per_node: u64,
    /// Issue 10: σ² of the distributed discrete Gaussian noise each node adds before
    /// masking in analyses run with differential privacy (`--dp on`, the default), as
    /// an exact fraction `[num, den]` (σ² = num/den; no floats), e.g. `[16, 1]`. Rounds
    /// carry it (raised to the largest `min_noise_variance` an invitee announced) and
    /// the number k of honest nodes it is calibrated for (t − H − the largest C among the
    /// invitees) in their signed start, and their sums are signed. Default [16, 1]
    /// (σ = 4 per node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_variance: Option<[u64; 2]>,
    /// Issue 11: seconds a multi-round analysis waits for a member of its population
    /// (the contributors of its first round) that left to come back, before a later
    /// round is retried over the whole population or the analysis stops. Default 60.
    #[serde(default = "default_retry_wait")]
    pub retry_wait_seconds: u64,
}

impl RoundSettings {
    /// The per-node noise variance of analyses run with differential privacy: as
    /// configured (checked at load) or [`DEFAULT_NOISE_VARIANCE`].
    pub fn noise_variance(&self) -> fedcrm_dp::sampler::Variance {
        let [num, den] = self.noise_variance.unwrap_or(DEFAULT_NOISE_VARIANCE);
        fedcrm_dp::sampler::Variance::new(num, den)
            .or_else(|_| fedcrm_dp::sampler::Variance::new(DEFAULT_NOISE_VARIANCE[0], DEFAULT_NOISE_VARIANCE[1]))
            .expect("the default noise variance is positive")
    }
}

/// The default per-node noise variance: σ² = 16 (σ = 4).
pub const DEFAULT_NOISE_VARIANCE: [u64; 2] = [16, 1];

fn default_timeout() -> u64 {
    30
}
fn default_retry_wait() -> u64 {
    60
}
fn default_chunk() -> u32 {
    fedcrm_protocol::DEFAULT_CHUNK_ELEMENTS
}
fn default_max_customers() -> u64 {
    fedcrm_analysis::width::DEFAULT_MAX_CUSTOMERS_PER_NODE
}

impl Default for RoundSettings {
    fn default() -> Self {
        Self {
            phase_timeout_seconds: default_timeout(),
            chunk_elements: default_chunk(),
            max_customers_per_node: default_max_customers(),
            noise_variance: None,
            retry_wait_seconds: default_retry_wait(),
        }
    }
}

/// Full SecAgg (Bonawitz et al. 2017: every node shares with every other) or SecAgg+
/// (Bell et al. 2020: each node shares with its k neighbours in a random graph), and
/// the threat SecAgg+'s graph parameters are chosen for (`fedcrm_crypto::graph`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecaggSettings {
    /// "auto" (default): full SecAgg below `full_below` invited nodes, SecAgg+ from
    /// there; "full" or "plus" to force one (SecAgg+ still falls back to full SecAgg
    /// when no graph sparser than the complete one meets the bounds).
    #[serde(default)]
    pub mode: SecaggMode,
    /// Default 100.
    #[serde(default = "default_full_below")]
    pub full_below: usize,
    /// γ: the fraction of nodes that may be corrupt, HQ's own and colluding together.
    /// The coordinator uses at least HQ's share of the invited nodes plus the largest
    /// colluding set any invitee assumes. Default 0.10.
    #[serde(default = "default_fraction")]
    pub corrupt_fraction: f64,
    /// δ: the fraction of nodes that may drop out of a round. Default 0.10.
    #[serde(default = "default_fraction")]
    pub dropout_fraction: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecaggMode {
    #[default]
    Auto,
    Full,
    Plus,
}

fn default_full_below() -> usize {
    fedcrm_crypto::graph::GraphConfig::default().full_below
}
fn default_fraction() -> f64 {
    0.10
}

impl Default for SecaggSettings {
    fn default() -> Self {
        Self {
            mode: SecaggMode::Auto,
            full_below: default_full_below(),
            corrupt_fraction: default_fraction(),
            dropout_fraction: default_fraction(),
        }
    }
}

/// Node sessions: how a dead connection is told from a live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    /// The coordinator sends an HTTP/2 PING after this many seconds without a frame
    /// from a node and closes the connection when the answer does not come within as
    /// many seconds again. A second session for a connected node's name waits up to
    /// twice this (plus 2 s) for the first to end: if it answered, the second is
    /// refused; if it was closed, the second replaces it. Default 10.
    #[serde(default = "default_keepalive")]
    pub keepalive_seconds: u64,
}

fn default_keepalive() -> u64 {
    10
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self { keepalive_seconds: default_keepalive() }
    }
}

impl SessionSettings {
    /// The HTTP/2 keepalive interval, and the time an answer may take.
    pub fn keepalive(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.keepalive_seconds.max(1))
    }

    /// How long a second session for one name waits for the first to end.
    pub fn duplicate_wait(&self) -> std::time::Duration {
        2 * self.keepalive() + std::time::Duration::from_secs(2)
    }
}

impl CoordinatorConfig {
    /// Load and resolve relative paths against the config file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (mut c, base): (CoordinatorConfig, _) = load_toml(path)?;
        c.tls.resolve(&base);
        resolve(&base, &mut c.audit_dir);
        resolve(&base, &mut c.models_dir);
        let chunk = c.rounds.chunk_elements;
        if chunk == 0 || chunk > fedcrm_protocol::MAX_CHUNK_ELEMENTS {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "[rounds] chunk_elements = {chunk}: a chunk must hold 1 to {} words to stay under the {} MiB \
                     message limit; the default is {}",
                    fedcrm_protocol::MAX_CHUNK_ELEMENTS,
                    fedcrm_protocol::MAX_MESSAGE_BYTES >> 20,
                    fedcrm_protocol::DEFAULT_CHUNK_ELEMENTS
                ),
            });
        }
        if c.rounds.max_customers_per_node == 0 {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "[rounds] max_customers_per_node = 0: every node holds at least one customer; the default is {}",
                    default_max_customers()
                ),
            });
        }
        if let Some([num, den]) = c.rounds.noise_variance
            && (num == 0 || den == 0)
        {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "[rounds] noise_variance = [{num}, {den}]: σ² = num/den needs both parts positive; leave the key \
                     out for the default [16, 1]"
                ),
            });
        }
        Ok(c)
    }
}
