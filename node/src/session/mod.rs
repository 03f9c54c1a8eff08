//! A node's session with the coordinator: dial out over mutual TLS, say hello, then
//! take part in rounds (Bonawitz et al. CCS 2017, Fig. 4, client side, via
//! `fedcrm_crypto::secagg`). The loop below only reads, checks the coordinator's
//! receipt and hands each message to its handler in [`round`]; all sending goes
//! through [`crate::egress::Egress`].
//!
//! Faults are sorted by who is to blame (rustls keeps `PeerMisbehaved` apart from
//! local errors): a message the coordinator got wrong is refused and named as its
//! fault; a failure of this node's own audit log ends the session and fails closed,
//! and is never reported as the coordinator's.

mod round;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedcrm_audit::Event;
use fedcrm_audit::log::{AuditLog, LogIdentity, SignedHead, SystemClock};
use fedcrm_protocol::pb::coordinator_client::CoordinatorClient;
use fedcrm_protocol::pki::{self, PrivateKeyPem, SigningKey, Usage};
use fedcrm_protocol::wire::{self, FromNode, ToNode};
use fedcrm_protocol::{MAX_MESSAGE_BYTES, SOFTWARE};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::approvals::Approvals;
use crate::computation::Tracker;
use crate::data::Dataset;
use crate::differencing::DifferencingGuard;
use crate::egress::{Egress, EgressError};
use crate::egress::{SharedLog, WireTap, lock};
use crate::policy::Policy;

pub use round::RoundTap;
#[cfg(feature = "test-util")]
pub use round::{HeldShare, HeldSharesTap};

/// Faults a test (or the demo) can inject, to show that others' rounds survive them.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Close the session at this point of the first round it joins.
    pub drop_at: Option<DropAt>,
    /// Like `drop_at`, but keep the connection open and go silent (a hung node).
    pub stall_at: Option<DropAt>,
    /// Send a masked vector one word too long.
    pub wrong_length: bool,
    /// Send a malformed chunk (index beyond count).
    pub malformed_chunk: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropAt {
    /// After advertising keys, before sharing them.
    AfterKeys,
    /// After sending its sealed shares, before the masked input.
    AfterShares,
    /// After the masked input has arrived, vanishing when asked to unmask.
    AfterMasked,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Files(#[from] fedcrm_protocol::config::ConfigError),
    #[error("certificate or key problem: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("cannot connect to the coordinator at {url}: {why}")]
    Connect { url: String, why: String },
    #[error("coordinator closed the session: {0}")]
    Rejected(String),
    /// Another process is connected with this node's certificate, and it answers:
    /// retrying cannot help until that process stops.
    #[error(
        "another process is already connected as this node: {0}; stop it (or this one) — two processes with one \
         node.toml would knock each other off"
    )]
    Duplicate(String),
    /// The coordinator broke the protocol in a way that ends the session.
    #[error("coordinator sent a malformed message: {0}")]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Egress(#[from] EgressError),
    /// A record of the sums this node helped compute cannot be read: it does not
    /// start with a differencing guard it cannot trust.
    #[error("audit log: {0}; run `fedcrm audit verify` on this node's log")]
    Guard(String),
    /// This node's audit log cannot be opened or read at start-up.
    #[error("cannot open this node's audit log: {0}")]
    OpenLog(fedcrm_audit::log::AuditError),
    /// This node's own audit log failed: the session ends (fail closed). Not the
    /// coordinator's fault.
    #[error("this node's audit log failed, so the session stops (fix the disk, then restart): {0}")]
    Audit(#[from] fedcrm_audit::log::AuditError),
}

impl SessionError {
    /// True when retrying cannot fix it: configuration, identity, an incompatible
    /// coordinator, or another live process with this node's certificate. The
    /// process should exit with the message instead of reconnecting.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SessionError::Files(_)
                | SessionError::Pki(_)
                | SessionError::Duplicate(_)
                | SessionError::Guard(_)
                | SessionError::OpenLog(_)
                | SessionError::Wire(wire::WireError::Version { .. })
        )
    }
}

/// Everything a session needs, loaded once.
pub struct NodeContext {
    pub name: String,
    pub url: String,
    pub server_name: String,
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    pub cert_pem: String,
    pub key: PrivateKeyPem,
    pub signing: SigningKey,
    pub dataset: Arc<Dataset>,
    pub policy: Policy,
    /// This node's organisation, from its certificate.
    pub organisation: String,
    pub audit: SharedLog,
    pub approvals: Approvals,
    pub faults: Faults,
    /// Test hook: the bytes of every message as the transport takes it.
    pub tap: Option<WireTap>,
    /// Test hook: a colluding node's view of each round (what HQ's own nodes hold).
    pub round_tap: Option<RoundTap>,
    /// Sums this node helped unmask, persisted in its audit log.
    pub differencing: DifferencingGuard,
    /// The analyses this node is part of, identified from their computations.
    pub analyses: Tracker,
    /// Analyses joined per (YYYY-MM, analysis kind): their ids.
    monthly: Mutex<HashMap<(String, String), HashSet<String>>>,
    /// Approvals already recorded as granted in the audit log.
    granted: Mutex<HashSet<String>>,
    /// Every round id this node was ever invited to (from its audit log): a round id
    /// comes once, so no signature or share of one round can count in another.
    rounds_seen: Mutex<HashSet<String>>,
    /// How often an idle session seals its audit log.
    seal_every: Duration,
}

impl std::fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext").field("name", &self.name).field("url", &self.url).finish_non_exhaustive()
    }
}

impl NodeContext {
    /// Load certificates and key from files; open the audit log and rebuild, from
    /// it, the monthly caps, the analysis ids used and the differencing guard.
    pub fn load(
        config: &crate::config::NodeConfig,
        dataset: Arc<Dataset>,
        faults: Faults,
    ) -> Result<Self, SessionError> {
        let m = config.tls.read()?;
        let (ca_pem, cert_pem, key) = (m.ca_pem, m.cert_pem, m.key);
        let signing = SigningKey::from_pem(&key)?;
        let first = |pem: &str, path: &PathBuf| -> Result<Vec<u8>, SessionError> {
            pki::pem_to_der_certs(pem)?.into_iter().next().ok_or_else(|| {
                SessionError::Pki(pki::PkiError::Certificate(format!("{} holds no certificate", path.display())))
            })
        };
        let ca_der = first(&ca_pem, &config.tls.ca)?;
        let cert_der = first(&cert_pem, &config.tls.cert)?;
        let me = pki::identity_from_cert(&cert_der)?;
        if me.name != config.name {
            return Err(SessionError::Pki(pki::PkiError::Certificate(format!(
                "{} is issued to {:?}, but this node is configured as {:?}; fix `name` or the certificate",
                config.tls.cert.display(),
                me.name,
                config.name
            ))));
        }
        let identity = LogIdentity {
            certificate_der: cert_der,
            role: me.role.as_str().to_string(),
            organisation: me.organisation.clone(),
            software: SOFTWARE.to_string(),
        };
        let mut log = AuditLog::open(
            &config.audit_dir,
            &config.name,
            identity,
            SigningKey::from_pem(&key)?,
            config.audit,
            Arc::new(SystemClock),
        )
        .map_err(SessionError::OpenLog)?;
        // Old files beyond the retention period go (the deletion is itself logged).
        log.apply_retention().map_err(SessionError::OpenLog)?;
        // Caps, used analysis ids and the differencing guard are counted from the
        // audit log, so a restart resets none of them; an unreadable log stops the
        // node rather than silently resetting them.
        let records = fedcrm_audit::log::read_records(&config.audit_dir).map_err(SessionError::OpenLog)?;
        let (monthly, seen) = count_admitted(&records);
        Ok(Self {
            name: config.name.clone(),
            url: config.coordinator.url.clone(),
            server_name: config.coordinator.server_name.clone(),
            ca_pem,
            ca_der,
            cert_pem,
            key,
            signing,
            dataset,
            policy: config.policy.clone(),
            organisation: me.organisation,
            audit: Arc::new(Mutex::new(log)),
            approvals: Approvals::new(&config.approvals_dir),
            faults,
            tap: None,
            round_tap: None,
            differencing: DifferencingGuard::from_records(&records).map_err(SessionError::Guard)?,
            analyses: Tracker::with_seen(seen),
            monthly: Mutex::new(monthly),
            granted: Mutex::new(HashSet::new()),
            rounds_seen: Mutex::new(
                records
                    .iter()
                    .filter_map(|r| match &r.event {
                        Event::RoundStarted { round, .. } => Some(round.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            seal_every: Duration::from_secs(config.audit.seal_every_seconds.max(1)),
        })
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The coordinator closed the stream (or shutdown was requested).
    Closed,
    /// A fault injection dropped the session on purpose.
    Dropped,
}

pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// The coordinator, once its Welcome certificate checked out.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub name: String,
    pub certificate: Vec<u8>,
}

/// Connect and serve one session until the coordinator closes it or `shutdown` fires.
pub async fn run_session(ctx: &NodeContext, mut shutdown: watch::Receiver<bool>) -> Result<SessionEnd, SessionError> {
    let tls = pki::client_tls(&ctx.ca_pem, &ctx.cert_pem, &ctx.key, &ctx.server_name);
    let endpoint = Endpoint::from_shared(ctx.url.clone())
        .map_err(|e| SessionError::Connect { url: ctx.url.clone(), why: e.to_string() })?
        .tls_config(tls)
        .map_err(|e| SessionError::Connect { url: ctx.url.clone(), why: e.to_string() })?
        .connect_timeout(Duration::from_secs(10));
    let channel: Channel =
        endpoint.connect().await.map_err(|e| SessionError::Connect { url: ctx.url.clone(), why: error_chain(&e) })?;
    let mut client = CoordinatorClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (mut egress, outbound) = Egress::open(ctx.audit.clone(), ctx.tap.clone());
    egress
        .send(&FromNode::Hello {
            version: wire::VERSION.into(),
            software: SOFTWARE.into(),
            node: ctx.name.clone(),
            rules: ctx.policy.rules(),
        })
        .await?;
    let mut inbound = client
        .session(outbound)
        .await
        .map_err(|s| match s.code() {
            tonic::Code::AlreadyExists => SessionError::Duplicate(s.message().to_string()),
            _ => SessionError::Rejected(status_text(&s, true)),
        })?
        .into_inner();
    let mut rounds = round::Rounds::new(ctx, egress, shutdown.clone());
    let mut seal_tick = tokio::time::interval(ctx.seal_every);
    seal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut coordinator: Option<Peer> = None;
    loop {
        let msg = tokio::select! {
            _ = seal_tick.tick() => {
                // Seal an idle log so that its head is signed within seal_every_seconds.
                lock(&ctx.audit).seal()?;
                continue;
            }
            _ = shutdown.changed() => {
                end_session(ctx, &coordinator, "node shutting down");
                return Ok(SessionEnd::Closed);
            }
            m = inbound.next() => m,
        };
        let msg = match msg {
            None => {
                end_session(ctx, &coordinator, "coordinator closed the session");
                return Ok(SessionEnd::Closed);
            }
            Some(Err(s)) => {
                end_session(ctx, &coordinator, "session failed");
                return Err(SessionError::Rejected(status_text(&s, false)));
            }
            Some(Ok(m)) => m,
        };
        let msg = match accept(ctx, &mut coordinator, msg)? {
            Ok(m) => m,
            Err(e @ wire::WireError::Version { .. }) => return Err(e.into()),
            Err(e) => {
                // The coordinator's fault: say so, and it drops this node from the
                // round at once instead of waiting for a deadline.
                tracing::warn!(node = %ctx.name, error = %e, "malformed message from coordinator");
                rounds.refuse_malformed(&e).await?;
                continue;
            }
        };
        if let Some(end) = rounds.handle(msg, &coordinator).await? {
            return Ok(end);
        }
    }
}

/// Parse a coordinator message, check its Welcome certificate and its receipt, and
/// log the receipt. The outer `Err` is a local failure (this node's audit log); the
/// inner `Err` is the coordinator's fault.
fn accept(
    ctx: &NodeContext,
    coordinator: &mut Option<Peer>,
    msg: fedcrm_protocol::pb::CoordinatorMessage,
) -> Result<Result<ToNode, wire::WireError>, SessionError> {
    let peer_fault = |field: &'static str, why: String| Ok(Err(wire::WireError::Field { field, why }));
    let (m, receipt) = match wire::parse_coordinator_message(msg) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    if let ToNode::Welcome { coordinator: name, certificate } = &m {
        match check_coordinator(ctx, name, certificate) {
            Ok(peer) => {
                record(
                    ctx,
                    Event::SessionOpened { peer: peer.name.clone(), organisation: peer.organisation, role: peer.role },
                )?;
                *coordinator = Some(Peer { name: peer.name, certificate: certificate.clone() });
            }
            Err(why) => return peer_fault("certificate", why),
        }
    }
    let Some(peer) = coordinator.as_ref() else { return peer_fault("welcome", "no welcome yet".into()) };
    let Some(r) = receipt else { return peer_fault("receipt", "missing".into()) };
    // Every coordinator message carries its signed log head; log it as a receipt.
    let signed = SignedHead::from_wire(peer.name.clone(), &r);
    if let Err(e) = signed.verify(&peer.certificate) {
        return peer_fault("receipt", e.to_string());
    }
    record(
        ctx,
        Event::Receipt {
            peer: peer.name.clone(),
            peer_seq: r.seq,
            peer_head: hex(&r.head),
            peer_time_ms: r.time_ms,
            signature_hex: hex(&r.signature),
            message: String::new(),
            bytes: 0,
            sha256: String::new(),
        },
    )?;
    Ok(Ok(m))
}

/// Fault injection: hold the session open and answer nothing until shutdown.
async fn stall(mut shutdown: watch::Receiver<bool>) -> Result<SessionEnd, SessionError> {
    let _ = shutdown.changed().await;
    Ok(SessionEnd::Dropped)
}

/// Record the end of a session and seal the log (best effort: the session is ending).
fn end_session(ctx: &NodeContext, coordinator: &Option<Peer>, why: &str) {
    if let Some(peer) = coordinator {
        let _ = record(ctx, Event::SessionClosed { peer: peer.name.clone(), reason: why.to_string() });
    }
    let _ = lock(&ctx.audit).seal();
}

/// Append to the node's audit log (fsynced before this returns). A failure is this
/// node's own.
pub(crate) fn record(ctx: &NodeContext, event: Event) -> Result<(), SessionError> {
    #[cfg(feature = "test-util")]
    if ctx
        .round_tap
        .as_ref()
        .and_then(|t| t.fail_audit.as_ref())
        .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
    {
        return Err(SessionError::Audit(fedcrm_audit::log::AuditError::Io {
            path: lock(&ctx.audit).dir().to_path_buf(),
            error: std::io::Error::other("injected: no space left on device"),
        }));
    }
    lock(&ctx.audit).append(event)?;
    Ok(())
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct CheckedPeer {
    name: String,
    organisation: String,
    role: String,
}

/// Check the coordinator's certificate from Welcome: issued by the brand CA for a
/// server, and naming the configured coordinator.
fn check_coordinator(ctx: &NodeContext, name: &str, cert: &[u8]) -> Result<CheckedPeer, String> {
    let id = pki::verify_cert(&ctx.ca_der, cert, unix_now(), Usage::Server).map_err(|e| e.to_string())?;
    if id.name != ctx.server_name || name != ctx.server_name {
        return Err(format!(
            "welcome names {name:?} with a certificate of {:?}; expected {:?}",
            id.name, ctx.server_name
        ));
    }
    Ok(CheckedPeer { name: id.name, organisation: id.organisation, role: id.role.as_str().into() })
}

type Monthly = HashMap<(String, String), HashSet<String>>;

/// From the audit log: the analyses this node joined per (month, analysis kind as
/// the node identified it), and every analysis id it admitted.
fn count_admitted(records: &[fedcrm_audit::Record]) -> (Monthly, BTreeSet<String>) {
    let mut started: HashMap<String, (String, String)> = HashMap::new();
    for r in records {
        if let Event::RoundStarted { round, analysis, analysis_kind, .. } = &r.event {
            started.insert(round.clone(), (analysis.clone(), analysis_kind.clone()));
        }
    }
    let mut out: Monthly = HashMap::new();
    let mut seen = BTreeSet::new();
    for r in records {
        if let Event::Egress { round: Some(round), message, .. } = &r.event
            && message == "advertise-keys"
            && let Some((id, kind)) = started.get(round)
        {
            out.entry((month_of(r.time_ms), kind.clone())).or_default().insert(id.clone());
            seen.insert(id.clone());
        }
    }
    (out, seen)
}

fn month_of(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .map(|t| format!("{:04}-{:02}", t.year(), t.month() as u8))
        .unwrap_or_default()
}

impl NodeContext {
    /// How many analyses of `kind` the node joined this month, and whether this
    /// analysis is one of them.
    fn cap_state(&self, kind: &str, analysis_id: &str) -> crate::policy::CapState {
        let m = self.monthly.lock().unwrap_or_else(|p| p.into_inner());
        let ids = m.get(&(month_of(unix_now_ms()), kind.to_string()));
        crate::policy::CapState {
            analyses_this_month: ids.map_or(0, |s| s.len() as u32),
            already_counted: ids.is_some_and(|s| s.contains(analysis_id)),
        }
    }

    /// Record a round id; false if this node has seen it before.
    fn first_sight(&self, round: &fedcrm_crypto::RoundId) -> bool {
        self.rounds_seen.lock().unwrap_or_else(|p| p.into_inner()).insert(round.to_hex())
    }

    fn count_analysis(&self, kind: &str, analysis_id: &str) {
        let mut m = self.monthly.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((month_of(unix_now_ms()), kind.to_string())).or_default().insert(analysis_id.to_string());
    }
}

/// A status with its cause chain, plus a hint when the TLS handshake failed on the
/// coordinator's side (it does not say why, by design: the node must check its certificate).
fn status_text(s: &tonic::Status, opening: bool) -> String {
    let mut text = format!("{:?}: {}", s.code(), s.message());
    let mut cur = std::error::Error::source(s);
    while let Some(c) = cur {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cur = c.source();
    }
    if opening && matches!(s.code(), tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Unavailable) {
        text.push_str(
            " (the coordinator ended the TLS handshake: check that this node's certificate was issued by the brand CA, \
             has not expired, and matches its key)",
        );
    }
    text
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Run until shutdown: reconnect after a lost session.
pub async fn run(ctx: NodeContext, retry: Duration, shutdown: watch::Receiver<bool>) -> Result<(), SessionError> {
    loop {
        match run_session(&ctx, shutdown.clone()).await {
            Ok(SessionEnd::Dropped) => return Ok(()),
            Ok(SessionEnd::Closed) if *shutdown.borrow() => return Ok(()),
            Ok(SessionEnd::Closed) => {
                tracing::warn!(node = %ctx.name, "session closed by the coordinator; reconnecting")
            }
            Err(e @ SessionError::Rejected(_)) | Err(e @ SessionError::Pki(_)) | Err(e @ SessionError::Wire(_)) => {
                return Err(e);
            }
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => tracing::warn!(node = %ctx.name, error = %e, "session failed; retrying"),
        }
        let mut s = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = s.changed() => return Ok(()),
        }
    }
}
