//! Connected node sessions, keyed by the identity in their client certificate, and
//! the single stream of events (messages, malformed messages, disconnects) that
//! rounds consume.

use std::collections::BTreeMap;
use std::sync::Mutex;

use fedcrm_protocol::pb;
use fedcrm_protocol::pki::OrgKind;
use fedcrm_protocol::wire::{self, FromNode, NodeRules, Receipt, ToNode};

use crate::audit::SharedLog;
use tokio::sync::mpsc;
use tonic::Status;

pub(crate) type Outbound = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// Messages queued per node before it counts as not reading. A round sends a node
/// at most six messages, so a full queue means the node has hung.
pub const OUTBOUND_QUEUE: usize = 256;

/// A connected node.
#[derive(Debug, Clone)]
pub struct Participant {
    pub name: String,
    pub organisation: String,
    /// DER of its client certificate, relayed to peers so they can verify its keys.
    pub certificate: Vec<u8>,
    /// The session this snapshot belongs to; events of other sessions are ignored.
    pub session: u64,
    /// HQ-owned channel or franchisee, from the certificate.
    pub kind: OrgKind,
    /// The rules the node announced in its Hello (it enforces them itself).
    pub rules: NodeRules,
}

impl Participant {
    /// As named in a signed roster.
    pub fn invitee(&self) -> fedcrm_protocol::wire::Invitee {
        fedcrm_protocol::wire::Invitee {
            name: self.name.clone(),
            organisation: self.organisation.clone(),
            kind: self.kind,
        }
    }
}

#[derive(Debug)]
struct Session {
    participant: Participant,
    id: u64,
    tx: Outbound,
}

/// What a node's session produced.
#[derive(Debug)]
pub enum EventBody {
    Message(FromNode),
    /// The node's fault: a message that does not parse or whose receipt is bad.
    Malformed(String),
    /// The coordinator's own fault while handling the node's message (its audit log
    /// failed): the round stops, and the node is not blamed.
    LocalFault(String),
    Closed,
}

#[derive(Debug)]
pub struct Event {
    pub node: String,
    pub session: u64,
    pub body: EventBody,
}

#[derive(Debug)]
pub struct Registry {
    sessions: Mutex<BTreeMap<String, Session>>,
    next_id: std::sync::atomic::AtomicU64,
    events: mpsc::Sender<Event>,
    audit: SharedLog,
}

/// Events queued before readers wait (back-pressure reaches the nodes' streams).
pub const EVENT_QUEUE: usize = 4096;

impl Registry {
    pub fn new(audit: SharedLog) -> (Self, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        (Self { sessions: Mutex::new(BTreeMap::new()), next_id: 1.into(), events: tx, audit }, rx)
    }

    /// Register a session; a previous session of the same node is replaced (closed).
    pub(crate) fn register(&self, mut participant: Participant, tx: Outbound) -> u64 {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        participant.session = id;
        let name = participant.name.clone();
        let old = self.lock().insert(name.clone(), Session { participant, id, tx });
        if let Some(old) = old {
            // Best effort: rounds also ignore events whose session is not the one invited.
            let _ = self.events.try_send(Event { node: name, session: old.id, body: EventBody::Closed });
        }
        id
    }

    /// End a node's session: it is told `why` and its stream closes; rounds see it
    /// leave. False if it was not connected.
    pub(crate) fn end(&self, name: &str, why: Status) -> bool {
        let Some(old) = self.lock().remove(name) else { return false };
        let _ = old.tx.try_send(Err(why));
        let _ = self.events.try_send(Event { node: name.to_string(), session: old.id, body: EventBody::Closed });
        true
    }

    pub(crate) fn unregister(&self, name: &str, session: u64) {
        let mut s = self.lock();
        if s.get(name).is_some_and(|x| x.id == session) {
            s.remove(name);
        }
    }

    /// End every session (the coordinator is stopping): each node's stream ends, so
    /// the node sees the coordinator go away and reconnects later. Returns how many
    /// sessions there were.
    pub fn close_all(&self) -> usize {
        let sessions = std::mem::take(&mut *self.lock());
        for name in sessions.keys() {
            tracing::info!(node = %name, "closing the session: the coordinator is stopping");
        }
        sessions.len()
    }

    /// Queue an event; waits when the queue is full, which slows the sending node.
    pub(crate) async fn event(&self, e: Event) {
        let _ = self.events.send(e).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Session>> {
        // A poisoned lock only means another task panicked mid-update of a map of
        // senders; the map itself is still consistent.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connected nodes, sorted by name.
    pub fn connected(&self) -> Vec<Participant> {
        self.lock().values().map(|s| s.participant.clone()).collect()
    }

    /// Send to a node; false if it is not connected, its stream is gone, or it has
    /// stopped reading (its queue of [`OUTBOUND_QUEUE`] messages is full). Never
    /// waits, so one hung node cannot stall a round for the others.
    ///
    /// Every message carries the coordinator's signed audit-log head, which the node
    /// logs as a receipt.
    pub async fn send(&self, node: &str, msg: &ToNode) -> bool {
        let tx = self.lock().get(node).map(|s| s.tx.clone());
        let Some(tx) = tx else { return false };
        let Some(m) = self.stamp(msg) else { return false };
        tx.try_send(Ok(m)).is_ok()
    }

    /// Encode a message with the coordinator's current signed log head.
    pub(crate) fn stamp(&self, msg: &ToNode) -> Option<pb::CoordinatorMessage> {
        match crate::audit::lock(&self.audit).signed_head() {
            Ok(signed) => {
                let receipt = Receipt::from(signed);
                Some(wire::coordinator_message(msg, Some(&receipt)))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sign the audit head; message not sent");
                None
            }
        }
    }
}
