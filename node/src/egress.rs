//! The egress door: the only code on the node that sends anything to the
//! coordinator. Every message is checked against the rounds the policy admitted,
//! then recorded in the node's audit log (round, analysis, message kind, byte size
//! and SHA-256 of the encoded message — never its content) and fsynced, and only
//! then handed to the transport, carrying the node's signed log head as a receipt.
//!
//! Size and hash are of the message as encoded *without* its receipt: the receipt
//! is the signature over the log head that records them.
//!
//! **Invariant:** no other module can put a message on the outbound stream. The
//! compiler enforces it: the stream ([`Outbound`]) is made only with its [`Egress`],
//! only `Egress::send` can queue on it, and the session call to the coordinator is
//! opened only by [`Outbound::open_session`], with that stream as all the node sends
//! (see their doctests).

use std::collections::HashMap;
use std::pin::Pin;

use fedcrm_audit::Event;
use fedcrm_audit::log::AuditError;
use fedcrm_crypto::RoundId;
use fedcrm_crypto::secagg::Phase;
use fedcrm_pki::Receipt;
use fedcrm_protocol::MAX_MESSAGE_BYTES;
use fedcrm_protocol::pb;
use fedcrm_protocol::pb::coordinator_client::CoordinatorClient;
use fedcrm_protocol::wire::{self, FromNode};
use prost::Message;
use ring::digest;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress refused: {0}")]
    Refused(String),
    #[error("audit log: {0}; nothing was sent")]
    Audit(#[from] AuditError),
    #[error("the session to the coordinator is closed")]
    Closed,
}

/// Test hook (feature `test-util`): sees the exact encoded bytes of every message as
/// the transport takes it.
#[cfg(feature = "test-util")]
pub type WireTap = std::sync::Arc<dyn Fn(&[u8]) + Send + Sync>;

/// What the transport drains: the door's queue (in tests, seen by the wire tap as the
/// transport takes each message). It is made only by [`Egress::open`], together
/// with the one door that fills it:
///
/// ```
/// use fedcrm_node::egress::{Egress, Outbound, SharedLog};
///
/// fn door(audit: SharedLog) -> (Egress, Outbound) {
///     Egress::open(audit)
/// }
/// ```
///
/// Code outside this module cannot make one from a stream of its own (the fields are
/// private):
///
/// ```compile_fail
/// use fedcrm_node::egress::Outbound;
/// use fedcrm_protocol::pb::NodeMessage;
/// use tokio_stream::wrappers::ReceiverStream;
///
/// fn forge(queue: tokio::sync::mpsc::Receiver<NodeMessage>) -> Outbound {
///     Outbound { inner: ReceiverStream::new(queue) }
/// }
/// ```
///
/// nor queue a message on the door's stream without passing through [`Egress::send`]:
///
/// ```compile_fail
/// use fedcrm_node::egress::Egress;
/// use fedcrm_protocol::pb::NodeMessage;
///
/// async fn bypass(egress: &Egress, message: NodeMessage) {
///     let _ = egress.tx.send(message).await;
/// }
/// ```
pub struct Outbound {
    inner: ReceiverStream<pb::NodeMessage>,
    #[cfg(feature = "test-util")]
    tap: Option<WireTap>,
}

impl Outbound {
    /// Open the session call to the coordinator over `channel`, with this stream as
    /// everything the node sends on it: the only way the node opens one. Returns the
    /// coordinator's side of the session.
    pub async fn open_session(
        self,
        channel: Channel,
    ) -> Result<tonic::Streaming<pb::CoordinatorMessage>, tonic::Status> {
        let mut client = CoordinatorClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(client.session(self).await?.into_inner())
    }
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

#[cfg(feature = "test-util")]
impl Outbound {
    /// The same stream, seen by `tap`.
    pub fn tapped(self, tap: Option<WireTap>) -> Self {
        Self { tap, ..self }
    }
}

impl Stream for Outbound {
    type Item = pb::NodeMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        #[cfg(feature = "test-util")]
        if let (Poll::Ready(Some(m)), Some(t)) = (&polled, &self.tap) {
            t(&m.encode_to_vec());
        }
        polled
    }
}

/// The node's audit log, shared by the session and the egress door.
pub use fedcrm_audit::log::{SharedLog, lock};

/// The only sender.
pub struct Egress {
    tx: mpsc::Sender<pb::NodeMessage>,
    audit: SharedLog,
    /// Rounds the policy admitted: their analysis id and the phases whose checks passed.
    admitted: HashMap<RoundId, Clearance>,
}

/// What the node's checks cleared for one round.
#[derive(Debug, Clone)]
struct Clearance {
    analysis: String,
    /// Phases past Round 1 (ShareKeys) whose rules passed: Rounds 2 (masked input), 3 (consistency
    /// signature) and 4 (unmasking).
    phases: Vec<Phase>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress").field("admitted", &self.admitted.len()).finish_non_exhaustive()
    }
}

impl Egress {
    /// The door and the stream the transport drains. Nothing else can put a message
    /// on that stream.
    pub fn open(audit: SharedLog) -> (Self, Outbound) {
        let (tx, rx) = mpsc::channel(64);
        let outbound = Outbound {
            inner: ReceiverStream::new(rx),
            #[cfg(feature = "test-util")]
            tap: None,
        };
        (Self { tx, audit, admitted: HashMap::new() }, outbound)
    }

    /// Record that the policy admitted `round` of analysis `analysis` (its id): its
    /// keys and sealed shares may leave.
    pub fn admit(&mut self, round: RoundId, analysis: &str) {
        self.admitted.insert(round, Clearance { analysis: analysis.to_string(), phases: Vec::new() });
    }

    /// Record that this node's rules passed for `phase` of `round` (over U2 before the
    /// masked input, over U3 and the signatures before signing and unmasking). Until
    /// then the door refuses that phase's messages.
    pub fn clear(&mut self, round: RoundId, phase: Phase) {
        if let Some(c) = self.admitted.get_mut(&round) {
            c.phases.push(phase);
        }
    }

    /// Forget a finished round: nothing more may be sent for it.
    pub fn close_round(&mut self, round: &RoundId) {
        self.admitted.remove(round);
    }

    /// Check, record (fsync), sign the log head, send.
    pub async fn send(&mut self, msg: &FromNode) -> Result<(), EgressError> {
        let analysis = match (msg, msg.round()) {
            (FromNode::Hello { .. }, _) | (FromNode::Refusal { .. }, _) => None,
            (_, Some(r)) => {
                let c = self
                    .admitted
                    .get(&r)
                    .ok_or_else(|| EgressError::Refused(format!("round {r} was not admitted by policy")))?;
                let needs = match msg {
                    FromNode::MaskedChunk(_) => Some(Phase::MaskedInputCollection),
                    FromNode::ConsistencySignature { .. } => Some(Phase::ConsistencyCheck),
                    FromNode::UnmaskShares { .. } => Some(Phase::Unmasking),
                    _ => None,
                };
                if let Some(p) = needs.filter(|p| !c.phases.contains(p)) {
                    return Err(EgressError::Refused(format!(
                        "round {r}: {p} was not cleared by this node's rules; nothing sent"
                    )));
                }
                Some(c.analysis.clone())
            }
            (_, None) => return Err(EgressError::Refused("message without a round".into())),
        };
        let bytes = pb::NodeMessage::from(msg).encode_to_vec();
        let event = Event::Egress {
            round: msg.round().map(|r| r.to_hex()),
            analysis,
            message: msg.kind().to_string(),
            bytes: bytes.len() as u64,
            sha256: hex::encode(digest::digest(&digest::SHA256, &bytes).as_ref()),
        };
        let signed = {
            let mut log = lock(&self.audit);
            log.append(event)?;
            log.signed_head()?
        };
        let receipt = Receipt::from(signed);
        tracing::debug!(kind = msg.kind(), bytes = bytes.len(), seq = receipt.seq, "egress");
        self.tx.send(wire::node_message(msg, Some(&receipt))).await.map_err(|_| EgressError::Closed)
    }
}

/// One message that left the node, as its audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EgressRecord {
    pub unix_ms: u64,
    pub seq: u64,
    pub round: Option<String>,
    /// Analysis id.
    pub analysis: Option<String>,
    /// Analysis kind (`rfm-histograms`, …) as the node identified it from the
    /// computation, from its record of the round.
    pub analysis_kind: Option<String>,
    pub kind: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Everything that left this node, from its audit log (for `fedcrm node egress`).
pub fn read_log(audit_dir: &std::path::Path) -> Result<Vec<EgressRecord>, AuditError> {
    let records = fedcrm_audit::log::read_records(audit_dir)?;
    let kinds: HashMap<String, String> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::RoundStarted { round, analysis_kind, .. } => Some((round.clone(), analysis_kind.clone())),
            _ => None,
        })
        .collect();
    Ok(records
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Egress { round, analysis, message, bytes, sha256 } => Some(EgressRecord {
                unix_ms: r.time_ms,
                seq: r.seq,
                analysis_kind: round.as_ref().and_then(|x| kinds.get(x).cloned()),
                round,
                analysis,
                kind: message,
                bytes,
                sha256,
            }),
            _ => None,
        })
        .collect())
}

/// Issue 11: the one request a node makes outside its session — `fedcrm node score`
/// asking for a published model by its id. It carries the model id and nothing of the
/// node's data; the scoring run records in the node's audit log which model it applied
/// (`local-scoring`). The answer is checked by [`crate::models::verify`] before use.
pub async fn fetch_model(channel: Channel, id: &str) -> Result<pb::ModelArtifact, tonic::Status> {
    let mut client = CoordinatorClient::new(channel);
    client.fetch_model(pb::ModelRequest { id: id.to_string() }).await.map(tonic::Response::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrm_audit::log::{AuditConfig, AuditLog, LogIdentity, SystemClock};
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn a_phase_not_cleared_by_the_rules_cannot_leave() {
        let dir = tempfile::tempdir().unwrap();
        let id = fedcrm_pki::Identity {
            name: "node-1".into(),
            organisation: "n1 ltd".into(),
            role: fedcrm_pki::Role::Node(fedcrm_pki::OrgKind::Franchisee),
        };
        let ca = fedcrm_pki::ca_init("brand", 30).unwrap();
        let (key, csr) = fedcrm_pki::new_key_and_csr(&id).unwrap();
        let (cert, _) = fedcrm_pki::sign_csr(&ca, &csr, fedcrm_pki::Validity::days_from_now(30)).unwrap();
        let cert_der = fedcrm_pki::pem_to_der_certs(&cert).unwrap().remove(0);
        let identity = LogIdentity {
            certificate_der: cert_der,
            role: "fedcrm-node-franchisee".into(),
            organisation: "n1 ltd".into(),
            software: "t".into(),
        };
        let signer = fedcrm_pki::SigningKey::from_pem(&key).unwrap();
        let log = AuditLog::open(dir.path(), "node-1", identity, signer, AuditConfig::default(), Arc::new(SystemClock))
            .unwrap();
        let (mut egress, _outbound) = Egress::open(Arc::new(Mutex::new(log)));
        let round = RoundId([7; 16]);
        let chunk = FromNode::MaskedChunk(wire::MaskedChunk {
            round,
            index: 0,
            count: 1,
            offset: 0,
            words: fedcrm_crypto::word::Words::W32(vec![1, 2, 3]),
        });
        let unmask = FromNode::UnmaskShares { round, shares: vec![] };
        let sign = FromNode::ConsistencySignature { round, signature: vec![1] };
        // Not admitted at all.
        assert!(matches!(egress.send(&chunk).await, Err(EgressError::Refused(_))));
        // Admitted (keys and shares may leave), but no later phase cleared.
        egress.admit(round, "analysis-1");
        for m in [&chunk, &sign, &unmask] {
            let err = egress.send(m).await.unwrap_err();
            assert!(err.to_string().contains("was not cleared by this node's rules"), "{err}");
        }
        egress.clear(round, Phase::MaskedInputCollection);
        egress.send(&chunk).await.unwrap();
        assert!(egress.send(&unmask).await.is_err());
    }
}
