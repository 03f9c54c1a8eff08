//! Issue 11: the coordinator's model registry. A trained model is registered as its
//! artifact's exact bytes ([`fedcrm_protocol::model::ModelHeader`] as JSON), under a
//! versioned id (`churn-v3`); it becomes available to the nodes only once HQ's model
//! publisher signs those bytes (`fedcrm hq publish ID`) and the coordinator has
//! checked the signature against the brand CA. The coordinator cannot publish on its
//! own: it holds no publisher key, and every node checks the signature again against
//! the publisher its own node.toml names.
//!
//! On disk, in `models_dir`: `ID.artifact.json` (the exact bytes) and, once
//! published, `ID.signed.json` (a [`SignedModel`]). Files are written to a temporary
//! name, fsynced and renamed, so a crash leaves a model either whole or absent.

use std::path::{Path, PathBuf};

use fedcrm_audit::Event;
use fedcrm_protocol::model::{FORMAT, ModelError, ModelHeader, SignedModel};
use ring::digest;

use crate::audit::{SharedLog, record};

/// What can go wrong in the registry, phrased for the analyst.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model registry {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("no model {0} in the registry; `fedcrm hq models` lists them")]
    Unknown(String),
    #[error("model {0} is not published; HQ's publisher must sign it first (`fedcrm hq publish {0}`)")]
    Unpublished(String),
    #[error("model {id}: {error}")]
    Refused { id: String, error: ModelError },
    #[error("model {id}: its publisher's certificate is revoked by the brand CA; publish with a current key")]
    Revoked { id: String },
    #[error("model {0} is already published")]
    AlreadyPublished(String),
    #[error("model id {0:?} is not a registry id (NAME-vN)")]
    BadId(String),
    #[error("the coordinator's audit log failed: {0}")]
    Audit(String),
    #[error("model {id}: {why}")]
    Corrupt { id: String, why: String },
}

/// One model version as listed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    pub id: String,
    pub kind: String,
    pub created_ms: u64,
    pub published: bool,
    pub publisher: Option<String>,
    pub sha256: String,
    /// `body.metrics` of the artifact, when the model has them.
    pub metrics: serde_json::Value,
}

/// What a publisher's certificate is checked against: the brand CA, the time, and
/// the CA's revocation list (a serial in hex → revoked).
#[allow(missing_debug_implementations)]
pub struct Trust<'a> {
    pub ca_der: &'a [u8],
    pub now_unix: u64,
    pub revoked: &'a dyn Fn(&str) -> bool,
}

/// The registry directory.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes))
}

pub use fedcrm_protocol::model::split_id;

impl Registry {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> RegistryError {
        let path = path.to_path_buf();
        move |error| RegistryError::Io { path: path.clone(), error }
    }

    fn artifact_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.artifact.json"))
    }

    fn signed_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.signed.json"))
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
        use std::io::Write as _;
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(self.io(&tmp))?;
        f.write_all(bytes).and_then(|()| f.sync_all()).map_err(self.io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(self.io(path))?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(self.io(&self.dir))
    }

    /// Every model id, sorted by name then version.
    fn ids(&self) -> Result<Vec<String>, RegistryError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RegistryError::Io { path: self.dir.clone(), error: e }),
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".artifact.json")).map(String::from))
            .filter(|id| split_id(id).is_some())
            .collect();
        ids.sort_by_key(|id| split_id(id).map(|(n, v)| (n.to_string(), v)));
        Ok(ids)
    }

    /// The next free id for a model named `name` (`churn` → `churn-v4` after v3).
    pub fn next_id(&self, name: &str) -> Result<String, RegistryError> {
        let last = self.ids()?.iter().filter_map(|id| split_id(id)).filter(|(n, _)| *n == name).map(|(_, v)| v).max();
        let id = format!("{name}-v{}", last.unwrap_or(0) + 1);
        split_id(&id).ok_or(RegistryError::BadId(id.clone()))?;
        Ok(id)
    }

    /// Register a trained model under `header.id` (from [`Registry::next_id`]).
    pub fn register(&self, header: &ModelHeader) -> Result<String, RegistryError> {
        split_id(&header.id).ok_or_else(|| RegistryError::BadId(header.id.clone()))?;
        let path = self.artifact_path(&header.id);
        if path.exists() {
            return Err(RegistryError::Corrupt { id: header.id.clone(), why: "an artifact of this id exists".into() });
        }
        let artifact = serde_json::to_string_pretty(header)
            .map_err(|e| RegistryError::Corrupt { id: header.id.clone(), why: e.to_string() })?;
        self.write_atomic(&path, artifact.as_bytes())?;
        Ok(sha256_hex(artifact.as_bytes()))
    }

    /// The exact artifact bytes of `id`.
    pub fn artifact(&self, id: &str) -> Result<String, RegistryError> {
        split_id(id).ok_or_else(|| RegistryError::BadId(id.to_string()))?;
        let path = self.artifact_path(id);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(RegistryError::Unknown(id.to_string())),
            Err(e) => Err(RegistryError::Io { path, error: e }),
        }
    }

    /// The signed model, once published.
    pub fn signed(&self, id: &str) -> Result<Option<SignedModel>, RegistryError> {
        self.artifact(id)?;
        let path = self.signed_path(id);
        let text = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RegistryError::Io { path, error: e }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| RegistryError::Corrupt { id: id.to_string(), why: format!("{}: {e}", path.display()) })
    }

    /// A published model for a node: only published ones are served.
    pub fn for_node(&self, id: &str) -> Result<SignedModel, RegistryError> {
        self.signed(id)?.ok_or_else(|| RegistryError::Unpublished(id.to_string()))
    }

    /// Every model version, oldest first within a name.
    pub fn list(&self) -> Result<Vec<Summary>, RegistryError> {
        let mut out = Vec::new();
        for id in self.ids()? {
            let artifact = self.artifact(&id)?;
            let header: ModelHeader = serde_json::from_str(&artifact)
                .map_err(|e| RegistryError::Corrupt { id: id.clone(), why: e.to_string() })?;
            let signed = self.signed(&id)?;
            let publisher = signed
                .as_ref()
                .and_then(|s| fedcrm_pki::pem_to_der_certs(&s.publisher_cert_pem).ok())
                .and_then(|mut d| fedcrm_pki::identity_from_cert(&d.remove(0)).ok())
                .map(|i| i.name);
            out.push(Summary {
                id,
                kind: header.kind,
                created_ms: header.created_ms,
                published: signed.is_some(),
                publisher,
                sha256: sha256_hex(artifact.as_bytes()),
                metrics: header.body.get("metrics").cloned().unwrap_or(serde_json::Value::Null),
            });
        }
        Ok(out)
    }

    /// Publish `id` with the publisher's signature over its exact bytes, after
    /// checking it against `trust` (the brand CA, now, the CRL); records
    /// `model-published`. Returns the artifact's SHA-256 and the
    /// publisher's name.
    pub fn publish(
        &self,
        id: &str,
        publisher_cert_pem: &str,
        signature: &str,
        trust: &Trust<'_>,
        audit: &SharedLog,
    ) -> Result<(String, String), RegistryError> {
        let artifact = self.artifact(id)?;
        if self.signed(id)?.is_some() {
            return Err(RegistryError::AlreadyPublished(id.to_string()));
        }
        let signed = SignedModel {
            artifact: artifact.clone(),
            publisher_cert_pem: publisher_cert_pem.to_string(),
            signature: signature.to_string(),
        };
        let refused = |error| RegistryError::Refused { id: id.to_string(), error };
        // The coordinator accepts any brand publisher; each node checks its own.
        let der = fedcrm_pki::pem_to_der_certs(publisher_cert_pem)
            .map_err(|e| refused(ModelError::Certificate(e.to_string())))?
            .into_iter()
            .next()
            .ok_or_else(|| refused(ModelError::Certificate("no certificate".into())))?;
        let who = fedcrm_pki::identity_from_cert(&der).map_err(|e| refused(ModelError::Certificate(e.to_string())))?;
        let (header, _) = signed.verify(trust.ca_der, trust.now_unix, &who.name).map_err(refused)?;
        if header.id != id || header.format != FORMAT {
            return Err(refused(ModelError::WrongModel { expected: id.to_string(), got: header.id }));
        }
        if (trust.revoked)(&fedcrm_pki::serial_hex(&der).unwrap_or_default()) {
            return Err(RegistryError::Revoked { id: id.to_string() });
        }
        let bytes = serde_json::to_vec_pretty(&signed)
            .map_err(|e| RegistryError::Corrupt { id: id.to_string(), why: e.to_string() })?;
        let sha256 = sha256_hex(artifact.as_bytes());
        let (name, version) = split_id(id).ok_or_else(|| RegistryError::BadId(id.to_string()))?;
        record(
            audit,
            Event::ModelPublished { model: name.to_string(), version: version.to_string(), sha256: sha256.clone() },
        )
        .map_err(|e| RegistryError::Audit(e.to_string()))?;
        self.write_atomic(&self.signed_path(id), &bytes)?;
        Ok((sha256, who.name))
    }
}
