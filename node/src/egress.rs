//! The egress door: the only code on the node that sends anything to the
//! coordinator. Every message is checked against the rounds the policy admitted,
//! then recorded (time, round, analysis, kind, byte size, SHA-256 of the exact
//! bytes sent — never content) before it is handed to the transport.
//!
//! **Invariant:** no other module holds the outbound channel (tested by
//! `tests/architecture.rs`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use fedcrm_crypto::RoundId;
use fedcrm_protocol::pb;
use fedcrm_protocol::wire::FromNode;
use prost::Message;
use ring::digest;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress refused: {0}")]
    Refused(String),
    #[error("egress log {path}: {source}")]
    Log { path: PathBuf, source: std::io::Error },
    #[error("the session to the coordinator is closed")]
    Closed,
}

/// One line of the egress log.
#[derive(Debug, Serialize, serde::Deserialize, Clone, PartialEq, Eq)]
pub struct EgressRecord {
    pub unix_ms: u64,
    pub round: Option<String>,
    pub analysis: Option<String>,
    pub kind: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The only sender.
#[derive(Debug)]
pub struct Egress {
    tx: mpsc::Sender<pb::NodeMessage>,
    log_path: PathBuf,
    log: std::fs::File,
    /// Rounds the policy admitted, with their analysis name.
    admitted: HashMap<RoundId, String>,
}

impl Egress {
    /// The door and the stream the transport drains. Nothing else can put a message
    /// on that stream.
    pub fn open(log_path: &Path) -> Result<(Self, ReceiverStream<pb::NodeMessage>), EgressError> {
        let (tx, rx) = mpsc::channel(64);
        Ok((Self::new(tx, log_path)?, ReceiverStream::new(rx)))
    }

    fn new(tx: mpsc::Sender<pb::NodeMessage>, log_path: &Path) -> Result<Self, EgressError> {
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| EgressError::Log { path: log_path.into(), source })?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|source| EgressError::Log { path: log_path.into(), source })?;
        Ok(Self { tx, log_path: log_path.into(), log, admitted: HashMap::new() })
    }

    /// Record that the policy admitted `round` for `analysis`.
    pub fn admit(&mut self, round: RoundId, analysis: &str) {
        self.admitted.insert(round, analysis.to_string());
    }

    /// Forget a finished round: nothing more may be sent for it.
    pub fn close_round(&mut self, round: &RoundId) {
        self.admitted.remove(round);
    }

    /// Check, record, send.
    pub async fn send(&mut self, msg: &FromNode) -> Result<(), EgressError> {
        let analysis = match (msg, msg.round()) {
            (FromNode::Hello { .. }, _) | (FromNode::Refusal { .. }, _) => None,
            (_, Some(r)) => Some(
                self.admitted
                    .get(&r)
                    .cloned()
                    .ok_or_else(|| EgressError::Refused(format!("round {r} was not admitted by policy")))?,
            ),
            (_, None) => return Err(EgressError::Refused("message without a round".into())),
        };
        let pbm: pb::NodeMessage = msg.into();
        let bytes = pbm.encode_to_vec();
        let rec = EgressRecord {
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            round: msg.round().map(|r| r.to_hex()),
            analysis,
            kind: msg.kind().to_string(),
            bytes: bytes.len() as u64,
            sha256: hex(digest::digest(&digest::SHA256, &bytes).as_ref()),
        };
        let mut line =
            serde_json::to_vec(&rec).map_err(|e| EgressError::Log { path: self.log_path.clone(), source: e.into() })?;
        line.push(b'\n');
        self.log.write_all(&line).map_err(|source| EgressError::Log { path: self.log_path.clone(), source })?;
        self.log.sync_data().map_err(|source| EgressError::Log { path: self.log_path.clone(), source })?;
        tracing::debug!(kind = rec.kind, bytes = rec.bytes, round = ?rec.round, "egress");
        self.tx.send(pbm).await.map_err(|_| EgressError::Closed)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Read an egress log back (for `fedcrm node egress` and tests).
pub fn read_log(path: &Path) -> std::io::Result<Vec<EgressRecord>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}
