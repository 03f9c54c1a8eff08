//! One node session's inbound side, after its hello: each message is admitted only if
//! it belongs to the running round and the node is still in it
//! ([`crate::registry::Registry::admit`]); anything else is dropped unread — not
//! hashed, not receipted, not queued — and counted once per burst in the audit log.
//! An admitted message is charged to the session's quota, its signed log head checked
//! and receipted, and queued for the round. A dropped message is decoded (tonic does
//! that) but never hashed, parsed or kept.

use std::sync::Arc;
use std::time::Duration;

use fedcrm_audit::Event;
use fedcrm_protocol::pb;
use fedcrm_protocol::wire;
use tonic::Streaming;

use crate::Coordinator;
use crate::audit::record;
use crate::registry::{Admission, Quota, Registered, SessionEvent, SessionEventBody};
use crate::service::{ReceiptFault, log_receipt};

/// Reads one node session: drops what belongs to no round the node is in (counted
/// once per burst), charges the rest to the session's quota, receipts and queues it.
pub(crate) struct Reader {
    pub coordinator: Arc<Coordinator>,
    pub name: String,
    pub cert: Vec<u8>,
    pub session: u64,
    /// The session's outbound stream: closed when the connection is gone.
    pub tx: crate::registry::Outbound,
}

/// Messages dropped since the last report.
#[derive(Debug, Default)]
struct Dropped {
    messages: u64,
    bytes: u64,
    /// Why the first of them was dropped.
    reason: String,
    /// When the burst is reported at the latest.
    due: Option<tokio::time::Instant>,
}

/// A burst of dropped messages is reported at the latest this long after it began
/// (earlier when the node next sends a message that counts, or its session ends).
const DROP_REPORT_AFTER: Duration = Duration::from_secs(60);

impl Reader {
    pub async fn run(self, mut inbound: Streaming<pb::NodeMessage>, registered: Registered) {
        let quota = Quota::new();
        let mut dropped = Dropped::default();
        let why = loop {
            let due = dropped.due;
            let m = tokio::select! {
                m = inbound.message() => m,
                _ = async { tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)).await }, if due.is_some() => {
                    self.report(&mut dropped);
                    continue;
                }
            };
            let m = match m {
                Ok(Some(m)) => m,
                Ok(None) => break "stream ended".to_string(),
                Err(s) => break format!("stream failed: {}", s.message()),
            };
            let envelope = wire::node_message_envelope(&m);
            let (body, size) = match self.coordinator.registry.admit(&self.name, self.session, &envelope) {
                Admission::Drop(reason) => {
                    if dropped.messages == 0 {
                        dropped.reason = reason;
                        dropped.due = Some(tokio::time::Instant::now() + DROP_REPORT_AFTER);
                    }
                    dropped.messages += 1;
                    dropped.bytes += envelope.bytes as u64;
                    continue;
                }
                Admission::Oversize { round, elements, chunk } => {
                    drop(m);
                    let why = format!(
                        "sent a masked chunk of {elements} elements, longer than round {round}'s chunk size of {chunk}"
                    );
                    (SessionEventBody::Malformed(why), 0)
                }
                Admission::Accept => {
                    self.report(&mut dropped);
                    (self.parse_and_receipt(m), envelope.bytes)
                }
            };
            let charge = tokio::select! {
                c = quota.charge(size) => c,
                _ = self.tx.closed() => break "connection closed".to_string(),
            };
            let event = SessionEvent { node: self.name.clone(), session: self.session, body, charge: Some(charge) };
            self.coordinator.registry.event(event);
        };
        self.report(&mut dropped);
        let c = &self.coordinator;
        c.registry.event(SessionEvent {
            node: self.name.clone(),
            session: self.session,
            body: SessionEventBody::Closed,
            charge: None,
        });
        let _ = record(&c.audit, Event::SessionClosed { peer: self.name.clone(), reason: why.clone() });
        c.registry.unregister(&self.name, self.session);
        c.enrolment.left(&self.name, crate::now_ms() / 1000);
        tracing::info!(node = %self.name, reason = %why, "node disconnected");
        // Anyone waiting for this session to end (a new session of the name) may go on.
        drop(registered);
    }

    /// Check the node's signed head on a message for the round and log the receipt.
    fn parse_and_receipt(&self, m: pb::NodeMessage) -> SessionEventBody {
        let digest = wire::node_message_digest(&m);
        match wire::parse_node_message(m) {
            Ok((m, Some(r))) => match log_receipt(&self.coordinator, &self.name, &self.cert, &r, m.kind(), digest) {
                Ok(()) => SessionEventBody::Message(m),
                Err(ReceiptFault::Peer(e)) => SessionEventBody::Malformed(e),
                Err(ReceiptFault::Local(e)) => SessionEventBody::LocalFault(e),
            },
            Ok((_, None)) => SessionEventBody::Malformed("message without the node's signed log head".into()),
            Err(e) => SessionEventBody::Malformed(e.to_string()),
        }
    }

    /// One line and one audit record for a burst of dropped messages.
    fn report(&self, d: &mut Dropped) {
        if d.messages == 0 {
            return;
        }
        let Dropped { messages, bytes, reason, .. } = std::mem::take(d);
        tracing::warn!(
            node = %self.name,
            "node {} sent {messages} messages ({bytes} bytes) for no round it takes part in ({reason}); dropped unread",
            self.name
        );
        let _ = record(
            &self.coordinator.audit,
            Event::MessagesDropped { peer: self.name.clone(), messages, bytes, reason },
        );
    }
}
