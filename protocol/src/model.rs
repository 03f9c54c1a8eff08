//! Issue 11: signed model artifacts. A model trained across the nodes (the churn
//! model; later the CLV model) is published as its artifact's exact bytes — a JSON
//! document with a fixed header ([`ModelHeader`]) and the model's own body — signed
//! with a **model-publisher** key whose certificate (role
//! [`fedcrm_pki::Role::Publisher`]) chains to the brand CA. A node scores with a model
//! only after [`SignedModel::verify`]: the certificate is the brand's and valid now,
//! its role is publisher, its name is the publisher the node's own configuration
//! names, and the signature covers every byte of the artifact (one changed weight, or
//! another key, is refused, naming which).
//!
//! The signature is ECDSA P-256/SHA-256 over [`SIGNING_CONTEXT`] followed by the
//! artifact bytes, so it cannot be replayed as any other fedcrm signature.

use fedcrm_pki::{Identity, PkiError, Role, SigningKey, Usage};
use serde::{Deserialize, Serialize};

/// Domain separation of a model signature from every other signature a brand key
/// makes.
pub const SIGNING_CONTEXT: &[u8] = b"fedcrm model artifact v1\0";

/// The artifact format this build reads and writes.
pub const FORMAT: &str = "fedcrm-model/1";

/// A registry id as (name, version): `churn-v3` → (`churn`, 3). The coordinator's
/// registry names models so; a node's audit log records scoring by name and version.
pub fn split_id(id: &str) -> Option<(&str, u32)> {
    let (name, v) = id.rsplit_once("-v")?;
    let ok_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let version = v.parse::<u32>().ok().filter(|n| *n > 0 && v == n.to_string())?;
    ok_name.then_some((name, version))
}

/// The header every artifact starts with; the model's own fields follow in `body`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelHeader {
    /// [`FORMAT`].
    pub format: String,
    /// The model's id in the coordinator's registry (e.g. `churn-20261130-3f9a2c`).
    pub id: String,
    /// What the model is (`churn-logistic`, …): which scorer applies it.
    pub kind: String,
    /// When training finished (ms since the Unix epoch).
    pub created_ms: u64,
    /// The model itself (feature spec, standardisation, weights, metrics, provenance),
    /// as its kind defines it.
    pub body: serde_json::Value,
}

/// A model as it rests in the registry and travels to a node.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedModel {
    /// The artifact's exact bytes (UTF-8 JSON of a [`ModelHeader`]); the signature
    /// covers them as they are, never a re-serialisation.
    pub artifact: String,
    /// The publisher's certificate, PEM.
    pub publisher_cert_pem: String,
    /// Hex of the ECDSA signature over [`SIGNING_CONTEXT`] ‖ `artifact`.
    pub signature: String,
}

impl std::fmt::Debug for SignedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedModel").field("artifact_bytes", &self.artifact.len()).finish_non_exhaustive()
    }
}

/// Why a model was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model file is malformed: {0}")]
    Malformed(String),
    #[error("the model's publisher certificate is refused: {0}")]
    Certificate(String),
    #[error(
        "the model is signed by {who}, whose certificate has role {role}, not fedcrm-model-publisher; only a \
         model publisher's signature is accepted"
    )]
    NotPublisher { who: String, role: String },
    #[error(
        "the model is signed by {got}, but this node accepts models only from {expected} ([scoring] publisher in \
         node.toml); ask HQ which publisher signed it"
    )]
    WrongPublisher { expected: String, got: String },
    #[error(
        "the model's signature does not verify against its publisher's certificate: the artifact was changed \
         after signing, or signed with another key; do not use it and fetch it again"
    )]
    BadSignature,
    #[error("the model is {got}, not the requested {expected}")]
    WrongModel { expected: String, got: String },
}

fn signed_bytes(artifact: &str) -> Vec<u8> {
    let mut m = SIGNING_CONTEXT.to_vec();
    m.extend_from_slice(artifact.as_bytes());
    m
}

impl SignedModel {
    /// Sign `header` with the publisher's key. The key must be the one `cert_pem`
    /// certifies, and the certificate a publisher's.
    pub fn sign(header: &ModelHeader, key: &SigningKey, cert_pem: &str) -> Result<Self, ModelError> {
        let artifact = serde_json::to_string_pretty(header).map_err(|e| ModelError::Malformed(e.to_string()))?;
        Self::sign_artifact(artifact, key, cert_pem)
    }

    /// Sign an artifact's exact bytes as the registry holds them (`fedcrm hq
    /// publish`): they must parse as a [`ModelHeader`] of this [`FORMAT`].
    pub fn sign_artifact(artifact: String, key: &SigningKey, cert_pem: &str) -> Result<Self, ModelError> {
        let header: ModelHeader =
            serde_json::from_str(&artifact).map_err(|e| ModelError::Malformed(format!("its artifact: {e}")))?;
        if header.format != FORMAT {
            return Err(ModelError::Malformed(format!("format {:?}; this build signs {FORMAT}", header.format)));
        }
        let der = single_cert(cert_pem)?;
        key.check_matches_cert(&der).map_err(|e| ModelError::Certificate(e.to_string()))?;
        let id = fedcrm_pki::identity_from_cert(&der).map_err(|e| ModelError::Certificate(e.to_string()))?;
        if id.role != Role::Publisher {
            return Err(ModelError::NotPublisher { who: id.name, role: id.role.as_str().into() });
        }
        let signature = key.sign(&signed_bytes(&artifact)).map_err(|e| ModelError::Certificate(e.to_string()))?;
        Ok(SignedModel { artifact, publisher_cert_pem: cert_pem.to_string(), signature: hex::encode(signature) })
    }

    /// Check the model against the brand CA at `now_unix` and the publisher this
    /// party accepts, then parse its header. Nothing of the artifact is trusted
    /// before the signature verifies.
    pub fn verify(
        &self,
        ca_der: &[u8],
        now_unix: u64,
        expected_publisher: &str,
    ) -> Result<(ModelHeader, Identity), ModelError> {
        let der = single_cert(&self.publisher_cert_pem)?;
        let who = fedcrm_pki::verify_cert(ca_der, &der, now_unix, Usage::Client)
            .map_err(|e| ModelError::Certificate(e.to_string()))?;
        if who.role != Role::Publisher {
            return Err(ModelError::NotPublisher { who: who.name, role: who.role.as_str().into() });
        }
        if who.name != expected_publisher {
            return Err(ModelError::WrongPublisher { expected: expected_publisher.into(), got: who.name });
        }
        let sig = hex::decode(&self.signature).map_err(|_| ModelError::BadSignature)?;
        fedcrm_pki::verify_signature(&der, &signed_bytes(&self.artifact), &sig).map_err(|e| match e {
            PkiError::BadSignature => ModelError::BadSignature,
            other => ModelError::Certificate(other.to_string()),
        })?;
        let header: ModelHeader =
            serde_json::from_str(&self.artifact).map_err(|e| ModelError::Malformed(format!("its artifact: {e}")))?;
        if header.format != FORMAT {
            return Err(ModelError::Malformed(format!(
                "format {:?}; this build reads {FORMAT}; upgrade fedcrm on this node",
                header.format
            )));
        }
        Ok((header, who))
    }
}

fn single_cert(pem: &str) -> Result<Vec<u8>, ModelError> {
    let mut certs = fedcrm_pki::pem_to_der_certs(pem).map_err(|e| ModelError::Certificate(e.to_string()))?;
    if certs.len() != 1 {
        return Err(ModelError::Certificate(format!("expected one certificate, found {}", certs.len())));
    }
    Ok(certs.remove(0))
}
