//! What every party's TOML configuration shares: the certificate files of the brand
//! PKI, loading with unknown keys rejected, and paths relative to the config file.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use fedcrm_pki::PrivateKeyPem;

/// A party's certificate files. The key file must be readable only by its owner (0600).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The brand CA certificate (PEM).
    pub ca: PathBuf,
    /// This party's certificate (PEM), issued by the brand CA from its CSR.
    pub cert: PathBuf,
    /// This party's private key (PEM, PKCS#8), made by `fedcrm … init` on this machine.
    pub key: PathBuf,
    /// The brand CA's revocation list (`ca/crl.pem`, written by `fedcrm ca revoke`).
    /// When set, a peer whose certificate it lists is refused at the TLS handshake.
    /// Default: none (no certificate is revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
}

/// The three files' contents.
#[derive(Debug)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key: PrivateKeyPem,
    /// The CRL's PEM, when `tls.crl` is set.
    pub crl_pem: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("config {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
}

impl TlsFiles {
    /// Make relative paths relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key].into_iter().chain(self.crl.as_mut()) {
            resolve(base, p);
        }
    }

    /// Read the files.
    pub fn read(&self) -> Result<TlsMaterial, ConfigError> {
        let read =
            |p: &PathBuf| std::fs::read_to_string(p).map_err(|source| ConfigError::Io { path: p.clone(), source });
        Ok(TlsMaterial {
            ca_pem: read(&self.ca)?,
            cert_pem: read(&self.cert)?,
            key: PrivateKeyPem::new(read(&self.key)?),
            crl_pem: self.crl.as_ref().map(read).transpose()?,
        })
    }
}

/// Make `p` relative to `base` if it is relative.
pub fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

/// Parse a TOML file (unknown keys are errors where the type says so); returns the
/// value and the directory relative paths in it are relative to.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<(T, PathBuf), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
    let value = toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
    Ok((value, path.parent().unwrap_or(Path::new(".")).to_path_buf()))
}
