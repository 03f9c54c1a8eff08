//! A node's session with the coordinator: dial out over mutual TLS, say hello, then
//! take part in rounds (Bonawitz et al. CCS 2017, Fig. 4, user side, Rounds 0–4 as
//! numbered in the paper and `fedcrm_crypto::secagg::Phase`). The loop below only reads, checks the coordinator's
//! receipt and hands each message to its handler in `round`; all sending goes
//! through [`crate::egress::Egress`].
//!
//! Faults are sorted by who is to blame (rustls keeps `PeerMisbehaved` apart from
//! local errors): a message the coordinator got wrong is refused and named as its
//! fault; a failure of this node's own audit log ends the session and fails closed,
//! and is never reported as the coordinator's.

mod connect;
#[cfg(feature = "test-util")]
mod faults;
mod round;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedcrm_audit::Event;
use fedcrm_audit::log::{AuditLog, LogIdentity, SignedHead, SystemClock};
use fedcrm_pki::{self as pki, PrivateKeyPem, SigningKey, Usage};
use fedcrm_protocol::SOFTWARE;
use fedcrm_protocol::wire::{self, FromNode, ToNode};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::approvals::Approvals;
use crate::computation::Tracker;
use crate::differencing::DifferencingGuard;
use crate::egress::{Egress, EgressError};
use crate::egress::{SharedLog, lock};
use crate::policy::Policy;

#[cfg(feature = "test-util")]
pub use faults::{DropAt, FalseReport, Faults};
pub use round::MAX_ABANDONED_GRAPHS;
#[cfg(feature = "test-util")]
pub use round::{HeldSecrets, HeldSharesTap, RoundTap};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Files(#[from] fedcrm_protocol::config::ConfigError),
    #[error("certificate or key problem: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("cannot connect to the coordinator at {url}: {why}")]
    Connect { url: String, why: String },
    /// This node refused the coordinator's certificate. Whether retrying can help
    /// depends on the reason: see [`SessionError::is_permanent`].
    #[error("the coordinator at {url} presented a certificate this node refuses: {refusal} ({detail}); {advice}")]
    CoordinatorRefused { url: String, refusal: pki::tls::Refusal, detail: String, advice: String },
    /// The coordinator ended the session with a gRPC status.
    #[error("coordinator closed the session: {text}")]
    Rejected { code: tonic::Code, text: String },
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
    /// This node's policy cannot be announced (checked at load; fix node.toml).
    #[error("this node's policy is invalid: {0}; fix node.toml")]
    Policy(String),
    /// This node's audit log cannot be opened or read at start-up.
    #[error("cannot open this node's audit log: {0}")]
    OpenLog(fedcrm_audit::log::AuditError),
    /// This node's own audit log failed: the session ends (fail closed). Not the
    /// coordinator's fault.
    #[error("this node's audit log failed, so the session stops (fix the disk, then restart): {0}")]
    Audit(#[from] fedcrm_audit::log::AuditError),
}

impl SessionError {
    /// This node refused the certificate the coordinator's address presented.
    pub fn is_refused_certificate(&self) -> bool {
        matches!(self, SessionError::CoordinatorRefused { .. })
    }

    /// Whether retrying cannot help, so the node stops and says so: this node's
    /// configuration, identity, software version or audit log must be fixed first
    /// (unreadable files, a bad certificate or key, an audit log that cannot be
    /// opened; a coordinator certificate from another CA than this node's `tls.ca`,
    /// for another name than `coordinator.server_name`, or judged by a CRL of another
    /// CA; a refusal by the coordinator that names this node's identity or version).
    /// Everything else passes, and the node reconnects: the coordinator restarting, a
    /// lost network, a TLS connection closed without notify, the coordinator's own
    /// transient faults, and an expired or revoked coordinator certificate (HQ's to
    /// renew; each failure is logged).
    pub fn is_permanent(&self) -> bool {
        use pki::tls::Refusal;
        use tonic::Code;
        match self {
            SessionError::Files(_)
            | SessionError::Pki(_)
            | SessionError::Duplicate(_)
            | SessionError::Guard(_)
            | SessionError::Policy(_)
            | SessionError::OpenLog(_)
            | SessionError::Audit(_)
            | SessionError::Egress(EgressError::Audit(_)) => true,
            SessionError::Egress(_) | SessionError::Connect { .. } => false,
            SessionError::CoordinatorRefused { refusal, .. } => {
                matches!(refusal, Refusal::UnknownIssuer | Refusal::WrongName | Refusal::UnknownRevocationStatus)
            }
            SessionError::Wire(e) => matches!(e, wire::WireError::Version { .. }),
            SessionError::Rejected { code, .. } => matches!(
                code,
                Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::FailedPrecondition
                    | Code::AlreadyExists
                    | Code::InvalidArgument
            ),
        }
    }
}

/// Everything a session needs, loaded once.
pub struct NodeContext {
    pub name: String,
    pub url: String,
    pub server_name: String,
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    /// Where `ca_pem` came from (named in errors).
    pub ca_path: PathBuf,
    /// The brand CA's revocation list (`tls.crl`), checked against the coordinator.
    pub crls: Mutex<Vec<rustls_pki_types::CertificateRevocationListDer<'static>>>,
    /// Issue 12: the serial numbers (hex) the CRL revokes, checked against the peers of a
    /// PSI run (node to node, no TLS handshake checks them).
    revoked: Mutex<HashSet<String>>,
    /// Where the CRL is read from again before every connection attempt, so a list HQ
    /// updated reaches a running node without a restart.
    pub crl_path: Option<PathBuf>,
    pub cert_pem: String,
    pub key: PrivateKeyPem,
    pub signing: SigningKey,
    /// The node's purchases (issue 14: a file's rows, or a database).
    pub source: crate::data::Source,
    pub policy: Policy,
    /// Issue 12: the identifier PSI runs match on (`[psi]`).
    pub psi: crate::psi::PsiConfig,
    /// This node's organisation, from its certificate.
    pub organisation: String,
    pub audit: SharedLog,
    pub approvals: Approvals,
    /// Test hook: faults to inject.
    #[cfg(feature = "test-util")]
    pub faults: Faults,
    /// Test hook: the bytes of every message as the transport takes it.
    #[cfg(feature = "test-util")]
    pub tap: Option<crate::egress::WireTap>,
    /// Test hook: a colluding node's view of each round (what HQ's own nodes hold).
    #[cfg(feature = "test-util")]
    pub round_tap: Option<RoundTap>,
    /// Sums this node helped unmask, persisted in its audit log.
    pub differencing: DifferencingGuard,
    /// The analyses this node is part of, identified from their computations.
    pub analyses: Tracker,
    /// Issue 10: this node's differential-privacy charges, rebuilt from its audit log.
    pub(crate) ledger: Mutex<fedcrm_dp::budget::Ledger>,
    /// The clock budget months are read from (tests inject a fixed one).
    pub clock: Arc<dyn fedcrm_audit::log::Clock>,
    /// Analyses joined per (YYYY-MM, analysis kind): their ids.
    monthly: Mutex<HashMap<(String, String), HashSet<String>>>,
    /// Approvals already recorded as granted in the audit log.
    granted: Mutex<HashSet<String>>,
    /// Issue 12: the PSI runs of each (YYYY-MM, peer organisation) this node sent keys
    /// in, from its audit log ([`crate::psi::PsiLimits::max_runs_per_peer_organisation`]).
    psi_peers: Mutex<Monthly>,
    /// Every round id this node was ever invited to (from its audit log): a round id
    /// comes once, so no signature or share of one round can count in another.
    rounds_seen: Mutex<HashSet<String>>,
    /// How often an idle session seals its audit log (and takes in spooled scorings).
    seal_every: Duration,
    /// Where `fedcrm node score` leaves its audit records while this node runs.
    scoring_spool: PathBuf,
    /// Sessions the coordinator welcomed so far (the reconnect loop resets its backoff
    /// after one).
    welcomed: AtomicU64,
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
        source: impl Into<crate::data::Source>,
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
        let (crls, revoked) = match (&m.crl_pem, &config.tls.crl) {
            (Some(pem), Some(path)) => {
                let (der, entries) = pki::crl::load(&ca_der, pem)
                    .map_err(|e| SessionError::Pki(pki::PkiError::Revocation(format!("{}: {e}", path.display()))))?;
                (vec![der], entries.into_iter().map(|r| r.serial_hex).collect())
            }
            _ => (vec![], HashSet::new()),
        };
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
        let mut log = open_log(config, cert_der, &key).map_err(SessionError::OpenLog)?;
        // Old files beyond the retention period go (the deletion is itself logged).
        log.apply_retention().map_err(SessionError::OpenLog)?;
        // Scorings `fedcrm node score` spooled while an earlier run of this node held
        // the log and did not take them in (crate::score::spool).
        let scoring_spool = crate::score::spool::dir(&config.audit_dir);
        crate::score::spool::ingest(&scoring_spool, &config.name, &mut log).map_err(SessionError::OpenLog)?;
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
            ca_path: config.tls.ca.clone(),
            crls: Mutex::new(crls),
            revoked: Mutex::new(revoked),
            crl_path: config.tls.crl.clone(),
            cert_pem,
            key,
            signing,
            source: source.into(),
            policy: config.policy.clone(),
            psi: config.psi,
            organisation: me.organisation,
            audit: Arc::new(Mutex::new(log)),
            approvals: Approvals::new(&config.approvals_dir),
            #[cfg(feature = "test-util")]
            faults: Faults::default(),
            #[cfg(feature = "test-util")]
            tap: None,
            #[cfg(feature = "test-util")]
            round_tap: None,
            differencing: DifferencingGuard::from_records(&records).map_err(SessionError::Guard)?,
            analyses: Tracker::with_seen(seen),
            ledger: Mutex::new(crate::privacy::ledger_from(&records)),
            clock: Arc::new(SystemClock),
            monthly: Mutex::new(monthly),
            granted: Mutex::new(HashSet::new()),
            psi_peers: Mutex::new(psi_peers_from(&records, &config.name)),
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
            scoring_spool,
            welcomed: AtomicU64::new(0),
        })
    }
}

/// Open this node's audit log (taking its directory lock) under the identity its
/// certificate names; the node's certified key signs the seals.
pub(crate) fn open_log(
    config: &crate::config::NodeConfig,
    cert_der: Vec<u8>,
    key: &PrivateKeyPem,
) -> Result<AuditLog, fedcrm_audit::log::AuditError> {
    let me = pki::identity_from_cert(&cert_der)?;
    let identity = LogIdentity {
        certificate_der: cert_der,
        role: me.role.as_str().to_string(),
        organisation: me.organisation,
        software: SOFTWARE.to_string(),
    };
    AuditLog::open(
        &config.audit_dir,
        &config.name,
        identity,
        SigningKey::from_pem(key)?,
        config.audit,
        Arc::new(SystemClock),
    )
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The coordinator closed the stream (or shutdown was requested).
    Closed,
    /// The session was ended on purpose before the coordinator closed it (a test's
    /// fault injection, or the demo's dropout).
    Dropped,
    /// A test's fault injection: the connection was lost; the node reconnects with
    /// its state (analyses, budget) intact.
    #[cfg(feature = "test-util")]
    Lost,
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
    let channel = connect(ctx).await?;
    let (mut egress, outbound) = Egress::open(ctx.audit.clone());
    #[cfg(feature = "test-util")]
    let outbound = outbound.tapped(ctx.tap.clone());
    egress
        .send(&FromNode::Hello {
            version: wire::VERSION.into(),
            software: SOFTWARE.into(),
            node: ctx.name.clone(),
            rules: ctx.policy.rules(),
            privacy: Some(ctx.privacy_status().map_err(SessionError::Policy)?),
        })
        .await?;
    // The coordinator may hold the call open (while it checks an older session of this
    // node); a stop request must not wait for it.
    let opened = tokio::select! {
        r = outbound.open_session(channel) => r,
        _ = shutdown.changed() => return Ok(SessionEnd::Closed),
    };
    let mut inbound = opened.map_err(|s| match s.code() {
        tonic::Code::AlreadyExists => SessionError::Duplicate(s.message().to_string()),
        _ => rejected(&s, true),
    })?;
    #[cfg(not(feature = "test-util"))]
    let mut rounds = round::Rounds::new(ctx, egress);
    #[cfg(feature = "test-util")]
    let mut rounds = round::Rounds::new(ctx, egress, shutdown.clone());
    let mut seal_tick = tokio::time::interval(ctx.seal_every);
    seal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut coordinator: Option<Peer> = None;
    loop {
        let msg = tokio::select! {
            _ = seal_tick.tick() => {
                // Seal an idle log so that its head is signed within seal_every_seconds,
                // after taking in the scorings `node score` spooled meanwhile.
                let mut log = lock(&ctx.audit);
                crate::score::spool::ingest(&ctx.scoring_spool, &ctx.name, &mut log)?;
                log.seal()?;
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
                return Err(rejected(&s, false));
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
                ctx.welcomed.fetch_add(1, Ordering::SeqCst);
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
            peer_head: hex::encode(r.head),
            peer_time_ms: r.time_ms,
            signature_hex: hex::encode(&r.signature),
            message: String::new(),
            bytes: 0,
            sha256: String::new(),
        },
    )?;
    Ok(Ok(m))
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
            && (message == "advertise-keys" || message == "psi-keys")
            && let Some((id, kind)) = started.get(round)
        {
            // A PSI run counts on its own against the cap (its analysis id may repeat).
            let counted = if message == "psi-keys" { round } else { id };
            out.entry((month_of(r.time_ms), kind.clone())).or_default().insert(counted.clone());
            seen.insert(id.clone());
        }
    }
    (out, seen)
}

/// Issue 12: from the audit log, the PSI runs this node sent keys in, per (month, peer
/// organisation as [`crate::psi::peer_organisation`] counts it) — every other
/// participant the run's start named.
fn psi_peers_from(records: &[fedcrm_audit::Record], me: &str) -> Monthly {
    let mut runs: HashMap<String, Vec<String>> = HashMap::new();
    for r in records {
        if let Event::RoundStarted { round, kind, invited, .. } = &r.event
            && kind == "psi"
        {
            let orgs = invited
                .iter()
                .filter(|m| m.name != me)
                .map(|m| {
                    let k = if m.kind == "hq" { pki::OrgKind::Hq } else { pki::OrgKind::Franchisee };
                    crate::psi::peer_organisation(k, &m.organisation)
                })
                .collect();
            runs.insert(round.clone(), orgs);
        }
    }
    let mut out: Monthly = HashMap::new();
    for r in records {
        if let Event::Egress { round: Some(round), message, .. } = &r.event
            && message == "psi-keys"
            && let Some(orgs) = runs.get(round)
        {
            for o in orgs {
                out.entry((month_of(r.time_ms), o.clone())).or_default().insert(round.clone());
            }
        }
    }
    out
}

/// Issue 10: a clock reading earlier than the latest privacy charge could reopen a
/// month already spent; the node refuses to charge until it is fixed.
fn clock_not_behind(ledger: &fedcrm_dp::budget::Ledger, now: u64) -> Result<(), String> {
    match ledger.latest() {
        Some(last) if now < last => Err(format!(
            "this node's clock reads {} ms earlier than its latest privacy charge; refusing until the system \
             clock is right (a clock stepped back could reopen a month's spent budget)",
            last - now
        )),
        _ => Ok(()),
    }
}

fn month_of(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .map(|t| format!("{:04}-{:02}", t.year(), t.month() as u8))
        .unwrap_or_default()
}

impl NodeContext {
    /// Read `tls.crl` again (HQ may have revoked more certificates since start-up).
    /// A file that no longer reads or is not the brand CA's list keeps the one in use,
    /// with a warning: a broken download must not switch revocation checks off.
    fn refresh_crl(&self) {
        let Some(path) = &self.crl_path else { return };
        let loaded = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| pki::crl::load(&self.ca_der, &pem).map_err(|e| e.to_string()));
        match loaded {
            Ok((der, entries)) => {
                *self.crls.lock().unwrap_or_else(|p| p.into_inner()) = vec![der];
                *self.revoked.lock().unwrap_or_else(|p| p.into_inner()) =
                    entries.into_iter().map(|r| r.serial_hex).collect();
            }
            Err(e) => {
                tracing::warn!(node = %self.name, crl = %path.display(), error = %e, "keeping the revocation list in use")
            }
        }
    }

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

    /// Issue 10: this node's privacy policy and this month's spending, for its Hello.
    pub fn privacy_status(&self) -> Result<fedcrm_protocol::wire::PrivacyStatus, String> {
        let ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        crate::privacy::status(&self.policy.privacy, &ledger, self.clock.now_ms())
    }

    /// Issue 10: `charge` (if any) if it stays within this month's budget; `Err` is the
    /// refusal's reason.
    pub(crate) fn within_budget(
        &self,
        charge: Option<fedcrm_dp::accounting::Charge>,
    ) -> Result<Option<fedcrm_dp::accounting::Charge>, String> {
        let Some(c) = charge else { return Ok(None) };
        let ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now_ms();
        clock_not_behind(&ledger, now)?;
        ledger.check(&self.policy.privacy.budget(), now, c).map_err(|e| format!("policy: {e}"))?;
        Ok(Some(c))
    }

    /// Issue 10: charge this node's budget for `start`'s noised contribution, which is
    /// about to leave: checked again (another analysis may have spent since the round
    /// started), then recorded in the audit log (fsynced) and the ledger. `Ok(Err)`: over
    /// budget, nothing recorded, the contribution must not leave.
    pub(crate) fn charge(
        &self,
        start: &wire::RoundStart,
        charge: fedcrm_dp::accounting::Charge,
    ) -> Result<Result<(), String>, SessionError> {
        let noise = start.noise.as_ref().map(|n| (&n.variance, n.honest));
        self.charge_for(&start.round.to_hex(), &start.analysis.analysis_id, noise, charge)
    }

    /// Issue 12: charge a PSI run's noised release (one node's noise alone, k = 1), as
    /// [`NodeContext::charge`] does a round's.
    pub(crate) fn charge_run(
        &self,
        run: &str,
        analysis: &str,
        variance: Option<&fedcrm_dp::sampler::Variance>,
        charge: fedcrm_dp::accounting::Charge,
    ) -> Result<Result<(), String>, SessionError> {
        self.charge_for(run, analysis, variance.map(|v| (v, 1)), charge)
    }

    fn charge_for(
        &self,
        round: &str,
        analysis: &str,
        noise: Option<(&fedcrm_dp::sampler::Variance, usize)>,
        charge: fedcrm_dp::accounting::Charge,
    ) -> Result<Result<(), String>, SessionError> {
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let budget = self.policy.privacy.budget();
        let now = self.clock.now_ms();
        if let Err(e) = clock_not_behind(&ledger, now) {
            return Ok(Err(e));
        }
        if let Err(e) = ledger.check(&budget, now, charge) {
            return Ok(Err(format!("policy: {e}")));
        }
        let month = fedcrm_dp::budget::Month::of(now);
        let (used, limit) = budget.used(ledger.month(month).0.compose(charge));
        record(
            self,
            Event::PrivacyCharged {
                round: round.to_string(),
                analysis: analysis.to_string(),
                node: String::new(),
                month: month.to_string(),
                charged_ms: now,
                rho: charge.rho,
                xi: charge.xi,
                noise_variance: noise.map_or_else(String::new, |n| n.0.to_string()),
                honest: noise.map_or(0, |n| n.1 as u64),
                budget: budget.describe(),
                used,
                limit,
            },
        )?;
        ledger.record(fedcrm_dp::budget::Spent {
            time_ms: now,
            analysis: analysis.to_string(),
            round: round.to_string(),
            charge,
        });
        tracing::info!(node = %self.name, %round, rho = charge.rho, used, limit, "privacy budget charged");
        Ok(Ok(()))
    }

    /// Record a round id; false if this node has seen it before.
    fn first_sight(&self, round: &fedcrm_crypto::RoundId) -> bool {
        self.rounds_seen.lock().unwrap_or_else(|p| p.into_inner()).insert(round.to_hex())
    }

    /// Issue 12: `Err` when the brand CA's revocation list (`tls.crl`) revokes the
    /// certificate `der` of `who`.
    pub(crate) fn not_revoked(&self, who: &str, der: &[u8]) -> Result<(), String> {
        let serial = pki::serial_hex(der).map_err(|e| format!("the certificate of {who}: {e}"))?;
        if self.revoked.lock().unwrap_or_else(|p| p.into_inner()).contains(&serial) {
            return Err(format!("the certificate of {who} (serial {serial}) is revoked by the brand CA's list"));
        }
        Ok(())
    }

    /// Issue 12: PSI runs this month with `organisation` (as
    /// [`crate::psi::peer_organisation`] counts it), not counting `run`.
    fn psi_runs_with(&self, organisation: &str, run: &str) -> usize {
        let m = self.psi_peers.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&(month_of(self.clock.now_ms()), organisation.to_string()))
            .map_or(0, |s| s.iter().filter(|r| *r != run).count())
    }

    /// Issue 12: count `run` against every peer organisation of it.
    fn count_psi_peers(&self, run: &str, organisations: &[String]) {
        let mut m = self.psi_peers.lock().unwrap_or_else(|p| p.into_inner());
        let month = month_of(self.clock.now_ms());
        for o in organisations {
            m.entry((month.clone(), o.clone())).or_default().insert(run.to_string());
        }
    }

    fn count_analysis(&self, kind: &str, analysis_id: &str) {
        let mut m = self.monthly.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((month_of(unix_now_ms()), kind.to_string())).or_default().insert(analysis_id.to_string());
    }
}

fn rejected(s: &tonic::Status, opening: bool) -> SessionError {
    SessionError::Rejected { code: s.code(), text: status_text(s, opening) }
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
             has not expired or been revoked, and matches its key; HQ's log names the reason)",
        );
    }
    text
}

/// Dial the coordinator over mutual TLS ([`connect::Connector`]); a certificate
/// this node refuses comes back as [`SessionError::CoordinatorRefused`].
async fn connect(ctx: &NodeContext) -> Result<Channel, SessionError> {
    ctx.refresh_crl();
    let crls = ctx.crls.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Dial {
        url: &ctx.url,
        server_name: &ctx.server_name,
        ca_pem: &ctx.ca_pem,
        ca_path: &ctx.ca_path,
        cert_pem: &ctx.cert_pem,
        key: &ctx.key,
        crls,
    }
    .connect()
    .await
}

/// What dialling the coordinator needs: the session's [`NodeContext`] has it, and so
/// does a command that talks to the coordinator once (`fedcrm node score`).
#[derive(Debug)]
pub struct Dial<'a> {
    pub url: &'a str,
    pub server_name: &'a str,
    pub ca_pem: &'a str,
    pub ca_path: &'a std::path::Path,
    pub cert_pem: &'a str,
    pub key: &'a PrivateKeyPem,
    pub crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
}

impl Dial<'_> {
    /// Connect over mutual TLS: the brand CA only, the configured name, the CRL.
    pub async fn connect(self) -> Result<Channel, SessionError> {
        let ctx = &self;
        let refused: connect::LastRefusal = Arc::default();
        let hook: pki::tls::RefusalHook = {
            let refused = refused.clone();
            Arc::new(move |_, e| {
                *refused.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((pki::tls::Refusal::classify(e), e.to_string()));
            })
        };
        let config = pki::tls::client_config(ctx.ca_pem, ctx.cert_pem, ctx.key, ctx.crls.clone(), hook)?;
        let server_name =
            rustls_pki_types::ServerName::try_from(ctx.server_name.to_string()).map_err(|e| SessionError::Connect {
                url: ctx.url.to_string(),
                why: format!("coordinator.server_name is not a dns name: {e}"),
            })?;
        let connector = connect::Connector { config: Arc::new(config), server_name };
        // The connector always speaks TLS; tonic must not try to add its own.
        let plain = ctx.url.replacen("https://", "http://", 1);
        let endpoint = Endpoint::from_shared(plain)
            .map_err(|e| SessionError::Connect { url: ctx.url.to_string(), why: e.to_string() })?
            .connect_timeout(Duration::from_secs(10));
        endpoint.connect_with_connector(connector).await.map_err(|e| {
            match refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some((refusal, detail)) => {
                    let advice = match &refusal {
                        pki::tls::Refusal::UnknownIssuer => format!(
                            "it was not issued by the CA in this node's tls.ca ({}); check that tls.ca is HQ's ca.pem — retrying cannot fix this",
                            ctx.ca_path.display()
                        ),
                        pki::tls::Refusal::WrongName => format!(
                            "this node expects {:?} (coordinator.server_name); check it against the coordinator's name — retrying cannot fix this",
                            ctx.server_name
                        ),
                        other => other.advice().to_string(),
                    };
                    SessionError::CoordinatorRefused { url: ctx.url.to_string(), refusal, detail, advice }
                }
                None => SessionError::Connect { url: ctx.url.to_string(), why: error_chain(&e) },
            }
        })
    }
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

/// How long a node waits before reconnecting: capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl Backoff {
    /// The wait after `failures` consecutive failed attempts (1 = the first): the base
    /// doubles from `first` up to `cap`, and the wait is drawn from [base/2, base]
    /// ("equal jitter") by the uniform random word `jitter`, so the nodes that lost one
    /// coordinator do not all come back in the same instant.
    pub fn delay(&self, failures: u32, jitter: u64) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let base = self.first.saturating_mul(1 << doublings).min(self.cap).max(Duration::from_millis(1));
        let half = base / 2;
        let span = (base - half).as_millis() as u64;
        half + Duration::from_millis(jitter % (span + 1))
    }
}

fn random_word() -> u64 {
    let mut b = [0u8; 8];
    // A failing OS RNG only loses the jitter, never the retry.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

/// Run until shutdown, reconnecting with [`Backoff`] whenever a session ends for a
/// reason that can pass (the coordinator restarting, the network lost, a TLS
/// connection closed without notify). Returns an error only for what retrying
/// cannot fix ([`SessionError::is_permanent`]): configuration, identity, software
/// version or this node's own audit log.
pub async fn run(ctx: NodeContext, backoff: Backoff, shutdown: watch::Receiver<bool>) -> Result<(), SessionError> {
    let mut failures = 0u32;
    loop {
        let welcomed = ctx.welcomed.load(Ordering::SeqCst);
        let outcome = run_session(&ctx, shutdown.clone()).await;
        if ctx.welcomed.load(Ordering::SeqCst) != welcomed {
            // A session was established: the next wait starts short again.
            failures = 0;
        }
        match outcome {
            Ok(SessionEnd::Dropped) => return Ok(()),
            // A refused coordinator certificate stops the node only before it ever met
            // the real coordinator (a wrong tls.ca); afterwards it may be an impostor on
            // the network, which must not be able to take the node offline for good.
            Err(e) if e.is_permanent() && !(ctx.welcomed.load(Ordering::SeqCst) > 0 && e.is_refused_certificate()) => {
                return Err(e);
            }
            _ if *shutdown.borrow() => return Ok(()),
            Ok(SessionEnd::Closed) => {
                tracing::warn!(node = %ctx.name, "the coordinator ended the session (restarting or shutting down?)")
            }
            #[cfg(feature = "test-util")]
            Ok(SessionEnd::Lost) => tracing::warn!(node = %ctx.name, "connection lost (test fault)"),
            Err(e) => tracing::warn!(node = %ctx.name, error = %e, "session failed"),
        }
        failures = failures.saturating_add(1);
        let wait = backoff.delay(failures, random_word());
        tracing::info!(node = %ctx.name, attempt = failures, "reconnecting in {:.1} s", wait.as_secs_f64());
        let mut s = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = s.changed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let b = Backoff { first: Duration::from_secs(1), cap: Duration::from_secs(60) };
        let lo = |n| b.delay(n, 0);
        let hi = |n| b.delay(n, u64::MAX - 1);
        assert_eq!(lo(1), Duration::from_millis(500));
        assert!(hi(1) <= Duration::from_secs(1) && hi(1) > Duration::from_millis(500), "{:?}", hi(1));
        assert_eq!(lo(2), Duration::from_secs(1));
        assert_eq!(lo(3), Duration::from_secs(2));
        assert_eq!(lo(7), Duration::from_secs(30));
        // Capped: never longer than the cap, however many failures.
        for n in [8, 20, 1000, u32::MAX] {
            assert_eq!(lo(n), Duration::from_secs(30));
            assert!(hi(n) <= Duration::from_secs(60));
        }
        // Jitter spreads the waits: 64 random draws are not all equal.
        let draws: std::collections::BTreeSet<_> = (0..64).map(|_| b.delay(5, random_word())).collect();
        assert!(draws.len() > 1);
    }

    #[test]
    fn only_what_retrying_cannot_fix_is_permanent() {
        let rejected = |code| SessionError::Rejected { code, text: String::new() };
        for c in [tonic::Code::Unavailable, tonic::Code::Unknown, tonic::Code::Cancelled, tonic::Code::Internal] {
            assert!(!rejected(c).is_permanent(), "{c:?}");
        }
        for c in [tonic::Code::PermissionDenied, tonic::Code::FailedPrecondition, tonic::Code::AlreadyExists] {
            assert!(rejected(c).is_permanent(), "{c:?}");
        }
        assert!(!SessionError::Connect { url: "https://hq".into(), why: "connection refused".into() }.is_permanent());
        assert!(!SessionError::Egress(EgressError::Closed).is_permanent());
        assert!(SessionError::Guard("unreadable".into()).is_permanent());
    }
}
