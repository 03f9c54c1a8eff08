//! Issue 11: models on the node. `fedcrm node score` fetches a published model from
//! the coordinator over the node's own mutual-TLS identity and accepts it only after
//! [`fedcrm_protocol::model::SignedModel::verify`]: the brand CA (and the node's CRL,
//! when configured), the publisher this node's `[scoring] publisher` names, and a
//! signature over every byte. Scoring itself happens on the node; nothing of it
//! leaves.

use fedcrm_pki as pki;
use fedcrm_protocol::model::{ModelError, ModelHeader, SignedModel};
use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;
use crate::session::{Dial, SessionError};

/// `[scoring]` in node.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scoring {
    /// The model publisher whose signature this node accepts (the CN of HQ's
    /// fedcrm-model-publisher certificate, e.g. `models.brand.example`). A model signed
    /// by anyone else — another key of the brand, a coordinator, an analyst — is
    /// refused.
    pub publisher: String,
    /// Issue 13: how a CLV model's scores become the list (`[scoring.clv]`).
    #[serde(default)]
    pub clv: fedcrm_model::clv::artifact::ClvSettings,
}

/// Why a model could not be fetched or was refused.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "node.toml has no [scoring] section naming the model publisher this node trusts; add\n  [scoring]\n  \
         publisher = \"<the CN of HQ's model-publisher certificate>\""
    )]
    NoPublisher,
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Connect(#[from] SessionError),
    #[error("the coordinator did not serve model {id}: {why}")]
    Coordinator { id: String, why: String },
    #[error("refused model {id}: {error}")]
    Refused { id: String, error: ModelError },
}

/// Fetch published model `id` and verify it at `now_unix` (seconds). Returns its
/// header (the model itself in `body`) and the signed form, as verified.
pub async fn fetch(cfg: &NodeConfig, id: &str, now_unix: u64) -> Result<(ModelHeader, SignedModel), FetchError> {
    let publisher = cfg.scoring.as_ref().ok_or(FetchError::NoPublisher)?.publisher.clone();
    let m = cfg.tls.read().map_err(|e| FetchError::Config(e.to_string()))?;
    let ca_der = pki::pem_to_der_certs(&m.ca_pem)
        .map_err(|e| FetchError::Config(format!("tls.ca: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| FetchError::Config("tls.ca holds no certificate".into()))?;
    let crls = match &m.crl_pem {
        Some(pem) => vec![pki::crl::load(&ca_der, pem).map_err(|e| FetchError::Config(format!("tls.crl: {e}")))?.0],
        None => Vec::new(),
    };
    let channel = Dial {
        url: &cfg.coordinator.url,
        server_name: &cfg.coordinator.server_name,
        ca_pem: &m.ca_pem,
        ca_path: &cfg.tls.ca,
        cert_pem: &m.cert_pem,
        key: &m.key,
        crls,
    }
    .connect()
    .await?;
    let reply = tokio::time::timeout(std::time::Duration::from_secs(30), crate::egress::fetch_model(channel, id))
        .await
        .map_err(|_| FetchError::Coordinator { id: id.into(), why: "no answer within 30 s".into() })?
        .map_err(|s| FetchError::Coordinator { id: id.into(), why: s.message().to_string() })?;
    let signed = SignedModel {
        artifact: reply.artifact,
        publisher_cert_pem: reply.publisher_cert_pem,
        signature: reply.signature,
    };
    verify(&signed, id, &ca_der, now_unix, &publisher, m.crl_pem.as_deref()).map(|h| (h, signed))
}

/// [`SignedModel::verify`] for this node, plus: the model is the one asked for, and
/// the publisher's certificate is not on the node's revocation list.
pub fn verify(
    signed: &SignedModel,
    id: &str,
    ca_der: &[u8],
    now_unix: u64,
    publisher: &str,
    crl_pem: Option<&str>,
) -> Result<ModelHeader, FetchError> {
    let refused = |error| FetchError::Refused { id: id.to_string(), error };
    let (header, _) = signed.verify(ca_der, now_unix, publisher).map_err(refused)?;
    if header.id != id {
        return Err(refused(ModelError::WrongModel { expected: id.to_string(), got: header.id }));
    }
    if let Some(pem) = crl_pem {
        let (_, revoked) = pki::crl::load(ca_der, pem).map_err(|e| FetchError::Config(format!("tls.crl: {e}")))?;
        let der = pki::pem_to_der_certs(&signed.publisher_cert_pem).unwrap_or_default();
        let serial = der.first().and_then(|d| pki::serial_hex(d).ok()).unwrap_or_default();
        if revoked.iter().any(|r| r.serial_hex == serial) {
            return Err(refused(ModelError::Certificate(format!(
                "the publisher's certificate (serial {serial}) is revoked by the brand CA"
            ))));
        }
    }
    Ok(header)
}
