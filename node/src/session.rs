//! A node's session with the coordinator: dial out over mutual TLS, say hello, then
//! take part in rounds (Bonawitz et al. 2017 client side, via `fedcrm_crypto::secagg`).
//! All sending goes through [`crate::egress::Egress`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use fedcrm_audit::log::{AuditLog, LogIdentity, SignedHead, SystemClock};
use fedcrm_audit::{Event, Member};
use std::time::Duration;

use fedcrm_crypto::secagg::{self, ClientAdvertised, ClientMasked, ClientShared, PeerKeys, RoundParams};
use fedcrm_crypto::{RoundId, SystemRandom};
use fedcrm_protocol::pb::coordinator_client::CoordinatorClient;
use fedcrm_protocol::pki::{self, PrivateKeyPem, SigningKey, Usage};
use fedcrm_protocol::rfm::CustomerRfm;
use fedcrm_protocol::wire::{self, FromNode, Invitee, RevealedShare, RoundStart, Sealed, ToNode};
use fedcrm_protocol::{MAX_MESSAGE_BYTES, SOFTWARE};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::analysis::local_vector;
use crate::approvals::{self, Approvals, Decision, Pending};
use crate::data::Dataset;
use crate::egress::{Egress, EgressError};
use crate::egress::{SharedLog, WireTap, lock};
use crate::features;
use crate::policy::{CapState, DifferencingGuard, Policy};

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
    #[error("coordinator sent a malformed message: {0}")]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error("audit log: {0}")]
    Audit(#[from] fedcrm_audit::log::AuditError),
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
    /// Queries this node helped unmask, and over which nodes (for the whole process).
    pub differencing: DifferencingGuard,
    /// Analyses joined per (YYYY-MM, analysis kind): their ids.
    monthly: Mutex<HashMap<(String, String), HashSet<String>>>,
    /// Approvals already recorded as granted in the audit log.
    granted: Mutex<HashSet<String>>,
    /// How often an idle session seals its audit log.
    seal_every: Duration,
}

impl std::fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext").field("name", &self.name).field("url", &self.url).finish_non_exhaustive()
    }
}

impl NodeContext {
    /// Load certificates and key from files.
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
        let log = AuditLog::open(
            &config.audit_dir,
            &config.name,
            identity,
            SigningKey::from_pem(&key)?,
            config.audit,
            Arc::new(SystemClock),
        )?;
        let mut log = log;
        // Old files beyond the retention period go (the deletion is itself logged).
        log.apply_retention()?;
        // Counted from the audit log, so a restart does not reset the monthly caps; an
        // unreadable log stops the node rather than silently resetting them.
        let monthly = Mutex::new(count_admitted(&config.audit_dir)?);
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
            differencing: DifferencingGuard::default(),
            monthly,
            granted: Mutex::new(HashSet::new()),
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

enum Phase {
    Advertised(ClientAdvertised),
    Shared(ClientShared),
    Masked(ClientMasked),
    Finished,
}

struct Active {
    start: RoundStart,
    input: Vec<u64>,
    phase: Phase,
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
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
        .send(&FromNode::Hello { version: wire::VERSION.into(), software: SOFTWARE.into(), node: ctx.name.clone() })
        .await?;
    let mut inbound =
        client.session(outbound).await.map_err(|s| SessionError::Rejected(status_text(&s, true)))?.into_inner();
    let rng = SystemRandom::new();
    let mut active: Option<Active> = None;
    let mut customers_cache: Option<(time::Date, Vec<CustomerRfm>)> = None;
    let mut seal_tick = tokio::time::interval(ctx.seal_every);
    seal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The coordinator's certificate, from Welcome, once checked against the brand CA.
    let mut coordinator: Option<(String, Vec<u8>)> = None;
    loop {
        let msg = tokio::select! {
            _ = seal_tick.tick() => {
                // Seal an idle log so that its head is signed within seal_every_seconds.
                lock(&ctx.audit).seal().map_err(EgressError::from)?;
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
        let parsed = wire::parse_coordinator_message(msg).and_then(|(m, r)| {
            if let ToNode::Welcome { coordinator: name, certificate } = &m {
                coordinator = Some(
                    check_coordinator(ctx, name, certificate)
                        .map_err(|why| wire::WireError::Field { field: "certificate", why })?,
                );
            }
            Ok((m, r))
        });
        let parsed = parsed.and_then(|(m, r)| {
            // Every coordinator message carries its signed log head; log it as a receipt.
            let (peer, cert) = coordinator
                .as_ref()
                .ok_or(wire::WireError::Field { field: "welcome", why: "no welcome yet".into() })?;
            let r = r.ok_or(wire::WireError::Field { field: "receipt", why: "missing".into() })?;
            let signed = SignedHead::from_wire(peer.clone(), &r);
            signed.verify(cert).map_err(|e| wire::WireError::Field { field: "receipt", why: e.to_string() })?;
            record(
                ctx,
                Event::Receipt {
                    peer: peer.clone(),
                    peer_seq: r.seq,
                    peer_head: hex(&r.head),
                    peer_time_ms: r.time_ms,
                    signature_hex: hex(&r.signature),
                    message: String::new(),
                    bytes: 0,
                    sha256: String::new(),
                },
            )
            .map_err(|e| wire::WireError::Field { field: "receipt", why: e.to_string() })?;
            Ok(m)
        });
        let msg = match parsed {
            Ok(m) => m,
            Err(e @ wire::WireError::Version { .. }) => return Err(e.into()),
            Err(e) => {
                // Say so: the coordinator drops this node from the round at once instead
                // of waiting for a deadline.
                tracing::warn!(node = %ctx.name, error = %e, "malformed message from coordinator");
                egress
                    .send(&FromNode::Refusal {
                        awaiting_approval: false,
                        round: None,
                        reason: format!("malformed message from the coordinator: {e}"),
                    })
                    .await?;
                continue;
            }
        };
        match msg {
            ToNode::Welcome { coordinator: name, .. } => {
                tracing::info!(node = %ctx.name, coordinator = %name, "session open");
            }
            ToNode::RoundStart(start) => {
                let start = *start;
                let round = start.round;
                if active.as_ref().is_some_and(|a| !matches!(a.phase, Phase::Finished)) {
                    refuse(ctx, &mut egress, round, "node is busy with another round").await?;
                    continue;
                }
                let kind = start.analysis.kind.name();
                // The coordinator signs who is in the round and who asked why: check and log it.
                let payload =
                    wire::roster_payload(&round, start.threshold, start.length, &start.analysis, &start.invited);
                let signature_ok = coordinator
                    .as_ref()
                    .is_some_and(|(_, cert)| pki::verify_signature(cert, &payload, &start.roster_signature).is_ok());
                record(
                    ctx,
                    Event::RosterSigned {
                        round: round.to_hex(),
                        members: start.invited.iter().map(member).collect(),
                        coordinator: coordinator.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
                        signature_ok,
                        signature_hex: hex(&start.roster_signature),
                        payload_sha256: hex(ring::digest::digest(&ring::digest::SHA256, &payload).as_ref()),
                    },
                )?;
                record(
                    ctx,
                    Event::RoundStarted {
                        round: round.to_hex(),
                        analysis: start.analysis.analysis_id.clone(),
                        kind: kind.to_string(),
                        analysis_kind: start.analysis.analysis_kind.clone(),
                        purpose: start.analysis.purpose.clone(),
                        threshold: start.threshold as u64,
                        length: start.length as u64,
                        invited: start.invited.iter().map(member).collect(),
                    },
                )?;
                let analysis_kind = start.analysis.analysis_kind.clone();
                let decision = if signature_ok {
                    ctx.policy.admit(&ctx.name, &ctx.organisation, &start, ctx.cap_state(&start))
                } else {
                    Err("the round's roster is not signed by the coordinator named in this node's configuration".into())
                };
                if let Err(why) = decision {
                    tracing::warn!(node = %ctx.name, %round, %why, "refusing round");
                    refuse(ctx, &mut egress, round, &why).await?;
                    continue;
                }
                if let Err(why) = approval(ctx, &start) {
                    tracing::warn!(node = %ctx.name, %round, %why, "round waits for manual approval");
                    refuse_as(ctx, &mut egress, round, &why, true).await?;
                    continue;
                }
                record(
                    ctx,
                    Event::PolicyDecision {
                        round: Some(round.to_hex()),
                        analysis: analysis_kind.clone(),
                        admitted: true,
                        reason: "allowed by policy".into(),
                    },
                )?;
                let reference = start.analysis.reference_date;
                if customers_cache.as_ref().map(|c| c.0) != Some(reference) {
                    let rfm = features::rfm(&ctx.dataset.purchases, reference).into_iter().map(|(_, r)| r).collect();
                    customers_cache = Some((reference, rfm));
                }
                // Unwrap safety: the cache was filled just above.
                let customers = &customers_cache.as_ref().unwrap().1;
                if let Err(e) = fedcrm_crypto::fixed::check_budget(start.invited.len() as u64, customers.len() as u64) {
                    refuse(ctx, &mut egress, round, &e.to_string()).await?;
                    continue;
                }
                let input = local_vector(&start.analysis, customers);
                let params = RoundParams { round, t: start.threshold, d: start.length };
                let (client, keys) = match ClientAdvertised::new(params, &ctx.name, &rng) {
                    Ok(x) => x,
                    Err(e) => {
                        refuse(ctx, &mut egress, round, &e.to_string()).await?;
                        continue;
                    }
                };
                let payload = secagg::key_signing_payload(&round, &ctx.name, &keys.enc, &keys.mask);
                let signature = ctx.signing.sign(&payload)?;
                egress.admit(round, &start.analysis.analysis_id);
                egress.send(&FromNode::Keys { round, enc: keys.enc, mask: keys.mask, signature }).await?;
                ctx.count_analysis(&start.analysis);
                tracing::info!(node = %ctx.name, %round, analysis = start.analysis.kind.name(), purpose = %start.analysis.purpose, "joined round");
                active = Some(Active { start, input, phase: Phase::Advertised(client) });
                if ctx.faults.stall_at == Some(DropAt::AfterKeys) {
                    return stall(shutdown).await;
                }
                if ctx.faults.drop_at == Some(DropAt::AfterKeys) {
                    return Ok(SessionEnd::Dropped);
                }
            }
            ToNode::Roster { round, keys } => {
                let Some(a) = active.as_mut().filter(|a| a.start.round == round) else { continue };
                if !matches!(a.phase, Phase::Advertised(_)) {
                    continue; // a repeated or out-of-order roster changes nothing
                }
                let Phase::Advertised(client) = std::mem::replace(&mut a.phase, Phase::Finished) else { continue };
                let verified = match verify_roster(ctx, &a.start, &keys) {
                    Ok(v) => v,
                    Err(why) => {
                        refuse(ctx, &mut egress, round, &why).await?;
                        continue;
                    }
                };
                match client.share(verified, &rng) {
                    Ok((next, sealed)) => {
                        let shares = sealed.into_iter().map(|(peer, ciphertext)| Sealed { peer, ciphertext }).collect();
                        egress.send(&FromNode::Shares { round, shares }).await?;
                        a.phase = Phase::Shared(next);
                        if ctx.faults.stall_at == Some(DropAt::AfterShares) {
                            return stall(shutdown).await;
                        }
                        if ctx.faults.drop_at == Some(DropAt::AfterShares) {
                            return Ok(SessionEnd::Dropped);
                        }
                    }
                    Err(e) => refuse(ctx, &mut egress, round, &e.to_string()).await?,
                }
            }
            ToNode::Shares { round, delivered, shares } => {
                let Some(a) = active.as_mut().filter(|a| a.start.round == round) else { continue };
                if !matches!(a.phase, Phase::Shared(_)) {
                    continue; // a repeated or out-of-order delivery changes nothing
                }
                let Phase::Shared(client) = std::mem::replace(&mut a.phase, Phase::Finished) else { continue };
                let incoming: Vec<(String, Vec<u8>)> = shares.into_iter().map(|s| (s.peer, s.ciphertext)).collect();
                let masked = client.receive(&delivered, &incoming).and_then(|ready| ready.mask(&a.input));
                match masked {
                    Ok((next, mut y)) => {
                        if ctx.faults.wrong_length {
                            y.push(0);
                        }
                        let mut chunks = wire::chunk(round, &y, a.start.chunk_elements);
                        if ctx.faults.malformed_chunk {
                            if let Some(c) = chunks.first_mut() {
                                c.index = c.count + 5;
                            }
                        }
                        for c in chunks {
                            egress.send(&FromNode::Masked(c)).await?;
                        }
                        a.phase = Phase::Masked(next);
                    }
                    Err(e) => refuse(ctx, &mut egress, round, &e.to_string()).await?,
                }
            }
            ToNode::Unmask { round, survivors, dropped } => {
                let Some(a) = active.as_mut().filter(|a| a.start.round == round) else { continue };
                if ctx.faults.stall_at == Some(DropAt::AfterMasked) {
                    return stall(shutdown).await;
                }
                if ctx.faults.drop_at == Some(DropAt::AfterMasked) {
                    // The masked input is known to have arrived (the coordinator asks to unmask).
                    return Ok(SessionEnd::Dropped);
                }
                if !matches!(a.phase, Phase::Masked(_)) {
                    let why = if matches!(a.phase, Phase::Finished) {
                        "a second unmask request in one round; refusing"
                    } else {
                        "an unmask request before this node sent its masked input; refusing"
                    };
                    refuse(ctx, &mut egress, round, why).await?;
                    continue;
                }
                let members: Vec<Invitee> =
                    a.start.invited.iter().filter(|i| survivors.contains(&i.name)).cloned().collect();
                let rule = ctx.policy.check_organisations(&ctx.organisation, &members, "surviving").and_then(|()| {
                    ctx.differencing.admit(&query_key(&a.start), &survivors, ctx.policy.min_participants)
                });
                if let Err(why) = rule {
                    tracing::warn!(node = %ctx.name, %round, %why, "refusing unmask request");
                    a.phase = Phase::Finished;
                    refuse(ctx, &mut egress, round, &why).await?;
                    continue;
                }
                let Phase::Masked(client) = std::mem::replace(&mut a.phase, Phase::Finished) else { continue };
                match client.unmask(&survivors, &dropped) {
                    Ok(revealed) => {
                        let shares = revealed
                            .into_iter()
                            .map(|r| match r {
                                secagg::Revealed::SelfMask { of, share } => {
                                    RevealedShare { of, self_mask: true, y: share.y_bytes().to_vec() }
                                }
                                secagg::Revealed::MaskKey { of, share } => {
                                    RevealedShare { of, self_mask: false, y: share.y_bytes().to_vec() }
                                }
                            })
                            .collect();
                        egress.send(&FromNode::Unmask { round, shares }).await?;
                    }
                    Err(e) => {
                        tracing::warn!(node = %ctx.name, %round, error = %e, "refusing unmask request");
                        refuse(ctx, &mut egress, round, &e.to_string()).await?;
                    }
                }
            }
            ToNode::RoundEnd { round, released, message } => {
                tracing::info!(node = %ctx.name, %round, released, %message, "round ended");
                lock(&ctx.audit).seal().map_err(EgressError::from)?;
                egress.close_round(&round);
                if active.as_ref().is_some_and(|a| a.start.round == round) {
                    active = None;
                }
            }
        }
    }
}

/// Fault injection: hold the session open and answer nothing until shutdown.
async fn stall(mut shutdown: watch::Receiver<bool>) -> Result<SessionEnd, SessionError> {
    let _ = shutdown.changed().await;
    Ok(SessionEnd::Dropped)
}

/// Record the end of a session and seal the log.
fn end_session(ctx: &NodeContext, coordinator: &Option<(String, Vec<u8>)>, why: &str) {
    if let Some((peer, _)) = coordinator {
        let _ = record(ctx, Event::SessionClosed { peer: peer.clone(), reason: why.to_string() });
    }
    let _ = lock(&ctx.audit).seal();
}

/// Append to the node's audit log (fsynced before this returns).
fn record(ctx: &NodeContext, event: Event) -> Result<(), EgressError> {
    lock(&ctx.audit).append(event)?;
    Ok(())
}

fn member(i: &Invitee) -> Member {
    Member { name: i.name.clone(), organisation: i.organisation.clone(), kind: wire::kind_str(i.kind).to_string() }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Check the coordinator's certificate from Welcome: issued by the brand CA for a
/// server, and naming the configured coordinator. Logs the session opening.
fn check_coordinator(ctx: &NodeContext, name: &str, cert: &[u8]) -> Result<(String, Vec<u8>), String> {
    let id = pki::verify_cert(&ctx.ca_der, cert, unix_now(), Usage::Server).map_err(|e| e.to_string())?;
    if id.name != ctx.server_name || name != ctx.server_name {
        return Err(format!(
            "welcome names {name:?} with a certificate of {:?}; expected {:?}",
            id.name, ctx.server_name
        ));
    }
    record(
        ctx,
        Event::SessionOpened { peer: id.name.clone(), organisation: id.organisation, role: id.role.as_str().into() },
    )
    .map_err(|e| e.to_string())?;
    Ok((id.name, cert.to_vec()))
}

/// Manual approval, when the policy asks for it. Logged; `Err` is the refusal reason.
fn approval(ctx: &NodeContext, start: &RoundStart) -> Result<(), String> {
    let kind = start.analysis.analysis_kind.as_str();
    if !ctx.policy.needs_approval(kind) {
        return Ok(());
    }
    let now = unix_now_ms();
    let decision = ctx
        .approvals
        .check(&start.analysis, now, ctx.policy.approval_expires_seconds, ctx.policy.approval_valid_seconds)
        .map_err(|e| e.to_string())?;
    let log = |e: Event| record(ctx, e).map_err(|e| e.to_string());
    let requested = |p: &Pending| Event::ApprovalRequested {
        id: p.id.clone(),
        analysis: p.analysis.clone(),
        purpose: p.purpose.clone(),
        requested_by: format!("{} ({})", p.requested_by, p.requested_by_organisation),
        expires_ms: p.expires_ms,
    };
    match decision {
        Decision::Approved(ok) => {
            if ctx.granted.lock().unwrap_or_else(|p| p.into_inner()).insert(ok.id.clone()) {
                log(Event::ApprovalGranted { id: ok.id, by: ok.by })?;
            }
            Ok(())
        }
        Decision::Waiting { pending, new } => {
            if new {
                log(requested(&pending))?;
            }
            Err(format!(
                "policy: {kind} needs manual approval; request {} waits until {} (`fedcrm node approve {}`)",
                pending.id,
                approvals::when(pending.expires_ms),
                pending.id
            ))
        }
        Decision::Expired { expired, renewed } => {
            log(Event::ApprovalExpired { id: expired.id.clone() })?;
            log(requested(&renewed))?;
            Err(format!(
                "policy: approval request {} expired at {} without approval; a new request waits until {}",
                expired.id,
                approvals::when(expired.expires_ms),
                approvals::when(renewed.expires_ms)
            ))
        }
    }
}

/// Analyses this node took part in, per (month, analysis kind), counted from its
/// audit log at start-up: the ids of analyses whose keys it sent.
fn count_admitted(dir: &std::path::Path) -> Result<HashMap<(String, String), HashSet<String>>, SessionError> {
    let records = fedcrm_audit::log::read_records(dir)?;
    let mut started: HashMap<String, (String, String)> = HashMap::new();
    for r in &records {
        if let Event::RoundStarted { round, analysis, analysis_kind, .. } = &r.event {
            started.insert(round.clone(), (analysis.clone(), analysis_kind.clone()));
        }
    }
    let mut out: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for r in &records {
        if let Event::Egress { round: Some(round), message, .. } = &r.event {
            if message == "advertise-keys" {
                if let Some((id, kind)) = started.get(round) {
                    out.entry((month_of(r.time_ms), kind.clone())).or_default().insert(id.clone());
                }
            }
        }
    }
    Ok(out)
}

fn month_of(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .map(|t| format!("{:04}-{:02}", t.year(), t.month() as u8))
        .unwrap_or_default()
}

impl NodeContext {
    /// How many analyses of this kind the node joined this month, and whether this
    /// analysis is one of them (later rounds of an admitted analysis are not new).
    fn cap_state(&self, start: &RoundStart) -> CapState {
        let m = self.monthly.lock().unwrap_or_else(|p| p.into_inner());
        let key = (month_of(unix_now_ms()), start.analysis.analysis_kind.clone());
        let ids = m.get(&key);
        CapState {
            analyses_this_month: ids.map_or(0, |s| s.len() as u32),
            already_counted: ids.is_some_and(|s| s.contains(&start.analysis.analysis_id)),
        }
    }

    fn count_analysis(&self, a: &fedcrm_protocol::wire::Analysis) {
        let mut m = self.monthly.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((month_of(unix_now_ms()), a.analysis_kind.clone())).or_default().insert(a.analysis_id.clone());
    }
}

/// The query a round computes, independent of who asked, why, and the round id.
fn query_key(start: &RoundStart) -> Vec<u8> {
    let mut a = start.analysis.clone();
    // Who asked, why and under which id do not change what the sums reveal.
    a.purpose.clear();
    a.analysis_id.clear();
    a.requested_by.clear();
    a.requested_by_organisation.clear();
    prost::Message::encode_to_vec(&fedcrm_protocol::pb::Analysis::from(&a))
}

/// Refuse (part of) a round: the decision and its reason go to the audit log, then
/// the refusal goes to the coordinator.
async fn refuse(ctx: &NodeContext, egress: &mut Egress, round: RoundId, reason: &str) -> Result<(), SessionError> {
    refuse_as(ctx, egress, round, reason, false).await
}

async fn refuse_as(
    ctx: &NodeContext,
    egress: &mut Egress,
    round: RoundId,
    reason: &str,
    awaiting_approval: bool,
) -> Result<(), SessionError> {
    record(
        ctx,
        Event::PolicyDecision {
            round: Some(round.to_hex()),
            analysis: String::new(),
            admitted: false,
            reason: reason.to_string(),
        },
    )?;
    egress.send(&FromNode::Refusal { round: Some(round), reason: reason.to_string(), awaiting_approval }).await?;
    egress.close_round(&round);
    Ok(())
}

/// Check every advertised key: certificate from the brand CA naming that node,
/// signature over (version, round, node, keys) by that certificate's key, and the
/// node was invited. Without this, the coordinator could substitute keys and read shares.
fn verify_roster(ctx: &NodeContext, start: &RoundStart, keys: &[wire::SignedKeys]) -> Result<Vec<PeerKeys>, String> {
    let now = unix_now();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if !start.invited.iter().any(|i| i.name == k.node) {
            return Err(format!("roster names {}, who was not invited", k.node));
        }
        let id = pki::verify_cert(&ctx.ca_der, &k.certificate, now, Usage::Client)
            .map_err(|e| format!("certificate of {} rejected: {e}", k.node))?;
        if id.name != k.node {
            return Err(format!("roster entry {} carries the certificate of {}", k.node, id.name));
        }
        let claimed = start.invited.iter().find(|i| i.name == k.node);
        let kind = match id.role {
            pki::Role::Node(kind) => kind,
            other => return Err(format!("roster entry {} holds a {} certificate", k.node, other.as_str())),
        };
        if claimed.is_none_or(|c| c.organisation != id.organisation || c.kind != kind) {
            return Err(format!(
                "the signed invitation describes {} differently from its certificate ({}, {})",
                k.node,
                id.organisation,
                wire::kind_str(kind)
            ));
        }
        let payload = secagg::key_signing_payload(&start.round, &k.node, &k.enc, &k.mask);
        pki::verify_signature(&k.certificate, &payload, &k.signature)
            .map_err(|e| format!("signature on the keys of {} rejected: {e}", k.node))?;
        out.push(PeerKeys { name: k.node.clone(), enc: k.enc, mask: k.mask });
    }
    Ok(out)
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
            Err(e) => tracing::warn!(node = %ctx.name, error = %e, "session failed; retrying"),
        }
        let mut s = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = s.changed() => return Ok(()),
        }
    }
}
