//! Connected node sessions, keyed by the identity in their client certificate; the
//! round that is running (which session may send what); and the single stream of
//! events (messages, malformed messages, disconnects) that rounds consume.
//!
//! **Bounded per node.** A node's message is queued only if it belongs to the running
//! round and the node is still in it (`Registry::admit`); anything else is dropped
//! before it is hashed, receipted or queued. What is queued is charged to the sending
//! session's inbound quota — at most [`INBOUND_MESSAGES`] events and
//! [`INBOUND_BYTES`] bytes — and released when the round has handled it; a session
//! over its quota stops reading its stream, so HTTP/2 flow control holds the node back
//! and no one else. There is one session per enrolled name (a second one is refused
//! or replaces the first, `Registry::make_room`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedcrm_analysis::rules::NodeRules;
use fedcrm_crypto::RoundId;
use fedcrm_pki::OrgKind;
use fedcrm_pki::Receipt;
use fedcrm_protocol::pb;
use fedcrm_protocol::wire::{self, Envelope, FromNode, ToNode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tonic::Status;

use crate::audit::SharedLog;

pub(crate) type Outbound = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// Messages queued per node before it counts as not reading. A round sends a node
/// at most six messages, so a full queue means the node has hung.
pub const OUTBOUND_QUEUE: usize = 256;

/// Bytes of parsed messages one session may have queued for the round at a time:
/// two of the largest messages the server decodes. A masked vector larger than this
/// still flows — its chunks are handled and freed as they arrive.
pub const INBOUND_BYTES: usize = 2 * fedcrm_protocol::MAX_MESSAGE_BYTES;

/// Events one session may have queued at a time (each is charged at least
/// `INBOUND_BYTES / INBOUND_MESSAGES` bytes, which is how the count is bounded).
pub const INBOUND_MESSAGES: usize = 64;

/// Per session, bytes held beyond its queue while a message is read: the HTTP/2
/// receive window ([`STREAM_WINDOW`], [`CONNECTION_WINDOW`]) and one message being
/// decoded, hashed and parsed (≤ 4 × `MAX_MESSAGE_BYTES`: tonic's decode buffer, which
/// keeps its size; the decoded message; and, for a message of the running round only,
/// the copy encoded without its receipt for the receipt's hash).
///
/// **Bound:** a node session holds at most `INBOUND_BYTES + IN_FLIGHT_BYTES`
/// (50 MiB) of its messages, however fast it sends, so the coordinator's memory for
/// node input is at most `enrolled × 50 MiB` plus the round's own state.
pub const IN_FLIGHT_BYTES: usize = CONNECTION_WINDOW as usize + 4 * fedcrm_protocol::MAX_MESSAGE_BYTES;

/// HTTP/2 receive window per stream (one node session is one stream).
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// HTTP/2 receive window per connection.
pub const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;

const INBOUND_UNIT: usize = INBOUND_BYTES / INBOUND_MESSAGES;

/// A connected, enrolled node: what a round can invite.
#[derive(Debug, Clone)]
pub struct ConnectedNode {
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

impl ConnectedNode {
    /// As named in a signed roster.
    pub fn invitee(&self) -> fedcrm_analysis::rules::Invitee {
        fedcrm_analysis::rules::Invitee {
            name: self.name.clone(),
            organisation: self.organisation.clone(),
            kind: self.kind,
        }
    }
}

/// Where and when a session was opened, for the messages about duplicates.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub addr: Option<SocketAddr>,
    pub opened_ms: u64,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(a) => write!(f, "{a}")?,
            None => f.write_str("an unknown address")?,
        }
        write!(f, " (session opened at {})", crate::audit::format_ms(self.opened_ms))
    }
}

#[derive(Debug)]
struct Session {
    node: ConnectedNode,
    id: u64,
    tx: Outbound,
    origin: Origin,
    /// Fires (with an error: its sender is dropped) when the session's reader ends.
    ended: watch::Receiver<()>,
}

/// What a node's session produced.
#[derive(Debug)]
pub enum SessionEventBody {
    Message(FromNode),
    /// The node's fault: a message that does not parse or whose receipt is bad.
    Malformed(String),
    /// The coordinator's own fault while handling the node's message (its audit log
    /// failed): the round stops, and the node is not blamed.
    LocalFault(String),
    Closed,
}

/// A session's event, queued for the running round.
#[derive(Debug)]
pub struct SessionEvent {
    pub node: String,
    pub session: u64,
    pub body: SessionEventBody,
    /// The share of the session's inbound quota this event holds, given back when the
    /// event is dropped (handled, ignored or discarded). Held, never read.
    #[allow(dead_code)]
    pub(crate) charge: Option<Charge>,
}

/// Part of a session's inbound quota, held by a queued event.
#[derive(Debug)]
pub(crate) struct Charge(#[allow(dead_code)] OwnedSemaphorePermit);

/// One session's inbound quota: [`INBOUND_BYTES`], charged per queued event.
#[derive(Debug, Clone)]
pub(crate) struct Quota(Arc<Semaphore>);

impl Quota {
    pub fn new() -> Self {
        Self(Arc::new(Semaphore::new(INBOUND_BYTES)))
    }

    /// Take the charge for an event of `bytes`, waiting while the session's queue is
    /// full (the node's stream is not read meanwhile).
    pub async fn charge(&self, bytes: usize) -> Charge {
        let n = bytes.clamp(INBOUND_UNIT, INBOUND_BYTES) as u32;
        // Unwrap safety: the semaphore is never closed.
        Charge(self.0.clone().acquire_many_owned(n).await.unwrap())
    }
}

/// Whether a node message belongs to the running round.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Accept,
    /// For the running round, but a chunk longer than its chunk size: the node's fault.
    Oversize {
        round: RoundId,
        elements: usize,
        chunk: usize,
    },
    /// Not for any round this session takes part in: dropped unread.
    Drop(String),
}

/// The round in progress: its id, chunk size, and the sessions still in it.
#[derive(Debug)]
struct ActiveRound {
    id: RoundId,
    chunk_elements: usize,
    live: BTreeMap<String, u64>,
}

/// A session of this name answered within the keepalive window: the new one is refused.
#[derive(Debug)]
pub(crate) struct StillConnected(pub Origin);

#[derive(Debug)]
pub struct Registry {
    sessions: Mutex<BTreeMap<String, Session>>,
    /// Names whose session is being opened (hello read, duplicate check running).
    opening: Mutex<BTreeSet<String>>,
    round: Mutex<Option<ActiveRound>>,
    next_id: std::sync::atomic::AtomicU64,
    events: mpsc::UnboundedSender<SessionEvent>,
    audit: SharedLog,
    /// Session readers still running (each records its session's end before it stops).
    readers: std::sync::Arc<watch::Sender<usize>>,
}

/// Marks a name as being opened until dropped.
#[derive(Debug)]
pub(crate) struct Opening<'a> {
    registry: &'a Registry,
    name: String,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.registry.opening.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.name);
    }
}

/// The running round, as the sessions' readers see it; cleared when dropped.
#[derive(Debug)]
pub(crate) struct Running<'a> {
    registry: &'a Registry,
    id: RoundId,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut r = self.registry.round.lock().unwrap_or_else(|p| p.into_inner());
        if r.as_ref().is_some_and(|a| a.id == self.id) {
            *r = None;
        }
    }
}

impl Running<'_> {
    /// The nodes still in the round; messages from the others are dropped from now on.
    pub fn retain(&self, live: &BTreeSet<String>) {
        let mut r = self.registry.round.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = r.as_mut().filter(|a| a.id == self.id) {
            a.live.retain(|n, _| live.contains(n));
        }
    }
}

/// A message belongs to the running round if its session is still in the round and
/// it names that round (or is a refusal of no particular round).
fn admit(round: Option<&ActiveRound>, node: &str, session: u64, e: &Envelope) -> Admission {
    let Some(a) = round else { return Admission::Drop("no round is running".into()) };
    if a.live.get(node) != Some(&session) {
        return Admission::Drop(format!("it is not in the running round {}", a.id));
    }
    let refusal_of_no_round = e.roundless && e.kind == "refusal";
    if e.round != Some(a.id) && !refusal_of_no_round {
        return Admission::Drop(format!("the running round is {}", a.id));
    }
    if e.elements > a.chunk_elements {
        return Admission::Oversize { round: a.id, elements: e.elements, chunk: a.chunk_elements };
    }
    Admission::Accept
}

impl Registry {
    /// The queue is unbounded in count, but every event in it is charged to its
    /// session's `Quota` (a disconnect, one per session, excepted).
    pub fn new(audit: SharedLog) -> (Self, mpsc::UnboundedReceiver<SessionEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                sessions: Mutex::new(BTreeMap::new()),
                opening: Mutex::new(BTreeSet::new()),
                round: Mutex::new(None),
                next_id: 1.into(),
                events: tx,
                audit,
                readers: std::sync::Arc::new(watch::Sender::new(0)),
            },
            rx,
        )
    }

    /// Claim `name` while its session is opened; `None` if another session of that
    /// name is being opened right now.
    pub(crate) fn begin_opening(&self, name: &str) -> Option<Opening<'_>> {
        let fresh = self.opening.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string());
        fresh.then(|| Opening { registry: self, name: name.to_string() })
    }

    /// Before a session of `name` is registered: if one is connected, wait up to
    /// `wait` for it to end. By then the HTTP/2 keepalive has closed it if it stopped
    /// answering (`Ok(Some(origin))`: the new session replaces it); if it is still
    /// there, it answered (`Err`: the new session is refused). `Ok(None)`: no session.
    pub(crate) async fn make_room(&self, name: &str, wait: Duration) -> Result<Option<Origin>, StillConnected> {
        let old = self.lock().get(name).map(|s| (s.tx.clone(), s.ended.clone(), s.origin.clone()));
        let Some((tx, mut ended, origin)) = old else { return Ok(None) };
        // The connection closed (hyper dropped the response stream) or the reader ended.
        let gone = async {
            tokio::select! {
                _ = tx.closed() => {}
                _ = ended.changed() => {}
            }
        };
        match tokio::time::timeout(wait, gone).await {
            Ok(()) => Ok(Some(origin)),
            Err(_) => Err(StillConnected(origin)),
        }
    }

    /// Register a session. A previous session of the same node (one that ended but
    /// has not unregistered yet) is replaced.
    pub(crate) fn register(&self, mut node: ConnectedNode, tx: Outbound, addr: Option<SocketAddr>) -> Registered {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        node.session = id;
        let name = node.name.clone();
        let (alive, ended) = watch::channel(());
        let origin = Origin { addr, opened_ms: crate::now_ms() };
        let old = self.lock().insert(name.clone(), Session { node, id, tx, origin, ended });
        if let Some(old) = old {
            // Rounds also ignore events whose session is not the one invited.
            let _ = self.events.send(SessionEvent {
                node: name,
                session: old.id,
                body: SessionEventBody::Closed,
                charge: None,
            });
        }
        self.readers.send_modify(|n| *n += 1);
        Registered { session: id, alive, readers: self.readers.clone() }
    }

    /// End a node's session: it is told `why` and its stream closes; rounds see it
    /// leave. False if it was not connected.
    pub(crate) fn end(&self, name: &str, why: Status) -> bool {
        let Some(old) = self.lock().remove(name) else { return false };
        let _ = old.tx.try_send(Err(why));
        let _ = self.events.send(SessionEvent {
            node: name.to_string(),
            session: old.id,
            body: SessionEventBody::Closed,
            charge: None,
        });
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
        for (name, session) in &sessions {
            tracing::info!(node = %name, "closing the session: the coordinator is stopping");
            // The status ends the node's stream now (its reader still holds a sender).
            let _ = session.tx.try_send(Err(Status::unavailable(
                "the coordinator is stopping; this node reconnects by itself once it is back",
            )));
        }
        sessions.len()
    }

    /// Queue an event (its charge was taken by the caller).
    pub(crate) fn event(&self, e: SessionEvent) {
        let _ = self.events.send(e);
    }

    /// Publish the round about to start to the sessions' readers; it stays running
    /// until the returned guard is dropped.
    pub(crate) fn round_started(&self, id: RoundId, chunk_elements: usize, invited: &[ConnectedNode]) -> Running<'_> {
        let live = invited.iter().map(|p| (p.name.clone(), p.session)).collect();
        *self.round.lock().unwrap_or_else(|p| p.into_inner()) = Some(ActiveRound { id, chunk_elements, live });
        Running { registry: self, id }
    }

    /// Whether a message from `node`'s session `session` belongs to the running round.
    pub(crate) fn admit(&self, node: &str, session: u64, e: &Envelope) -> Admission {
        admit(self.round.lock().unwrap_or_else(|p| p.into_inner()).as_ref(), node, session, e)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Session>> {
        // A poisoned lock only means another task panicked mid-update of a map of
        // senders; the map itself is still consistent.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connected nodes, sorted by name.
    pub fn connected(&self) -> Vec<ConnectedNode> {
        self.lock().values().filter(|s| !s.tx.is_closed()).map(|s| s.node.clone()).collect()
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

/// A registered session; the session ends (for [`Registry::make_room`]) when this is dropped.
#[derive(Debug)]
pub(crate) struct Registered {
    pub session: u64,
    /// Held, never read: dropping it tells [`Registry::make_room`] the session ended.
    #[allow(dead_code)]
    pub alive: watch::Sender<()>,
    readers: std::sync::Arc<watch::Sender<usize>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.readers.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Registry {
    /// Wait until every session reader has recorded its session's end (a stopping
    /// coordinator seals its log only after them).
    pub async fn readers_done(&self) {
        let mut rx = self.readers.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &'static str, round: Option<RoundId>, elements: usize) -> Envelope {
        Envelope { kind, round, roundless: round.is_none() && kind != "masked-chunk", elements, bytes: 100 }
    }

    #[test]
    fn only_messages_of_the_running_round_from_its_live_sessions_are_admitted() {
        let (r, other) = (RoundId([1; 16]), RoundId([2; 16]));
        let round = ActiveRound { id: r, chunk_elements: 10, live: [("a".to_string(), 7)].into() };
        let chunk = envelope("masked-chunk", Some(r), 10);
        assert_eq!(admit(Some(&round), "a", 7, &chunk), Admission::Accept);
        assert_eq!(admit(Some(&round), "a", 7, &envelope("refusal", None, 0)), Admission::Accept);
        let dropped = |a: Admission| matches!(a, Admission::Drop(_));
        assert!(dropped(admit(None, "a", 7, &chunk)), "no round running");
        assert!(dropped(admit(Some(&round), "a", 8, &chunk)), "an earlier session of the node");
        assert!(dropped(admit(Some(&round), "b", 7, &chunk)), "a node not in the round");
        assert!(dropped(admit(Some(&round), "a", 7, &envelope("masked-chunk", Some(other), 1))), "another round");
        assert!(dropped(admit(Some(&round), "a", 7, &envelope("hello", None, 0))), "a second hello");
        assert!(dropped(admit(Some(&round), "a", 7, &envelope("masked-chunk", None, 1))), "a malformed round id");
        assert_eq!(
            admit(Some(&round), "a", 7, &envelope("masked-chunk", Some(r), 11)),
            Admission::Oversize { round: r, elements: 11, chunk: 10 }
        );
    }

    #[tokio::test]
    async fn a_session_over_its_quota_waits() {
        let quota = Quota::new();
        // Small events are charged a unit each: the count is bounded.
        let mut held: Vec<Charge> = Vec::new();
        for _ in 0..INBOUND_MESSAGES {
            held.push(quota.charge(10).await);
        }
        let waits = async |q: &Quota, bytes: usize| {
            tokio::select! {
                biased;
                _ = q.charge(bytes) => false,
                _ = std::future::ready(()) => true,
            }
        };
        assert!(waits(&quota, 1).await, "event {} waits", INBOUND_MESSAGES + 1);
        held.pop();
        assert!(!waits(&quota, 1).await, "one handled event makes room for one");
        // Large events are charged their size: the bytes are bounded.
        drop(held);
        let big = quota.charge(fedcrm_protocol::MAX_MESSAGE_BYTES).await;
        let _second = quota.charge(fedcrm_protocol::MAX_MESSAGE_BYTES).await;
        assert!(waits(&quota, 1).await, "two of the largest messages fill the quota");
        drop(big);
        assert!(!waits(&quota, fedcrm_protocol::MAX_MESSAGE_BYTES).await);
    }
}
