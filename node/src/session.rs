//! A node's session with the coordinator: dial out over mutual TLS, say hello, then
//! take part in rounds (Bonawitz et al. 2017 client side, via `fedcrm_crypto::secagg`).
//! All sending goes through [`crate::egress::Egress`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fedcrm_crypto::secagg::{self, ClientAdvertised, ClientMasked, ClientShared, PeerKeys, RoundParams};
use fedcrm_crypto::{RoundId, SystemRandom};
use fedcrm_protocol::pb::coordinator_client::CoordinatorClient;
use fedcrm_protocol::pki::{self, PrivateKeyPem, SigningKey, Usage};
use fedcrm_protocol::rfm::CustomerRfm;
use fedcrm_protocol::wire::{self, FromNode, RevealedShare, RoundStart, Sealed, ToNode};
use fedcrm_protocol::{MAX_MESSAGE_BYTES, SOFTWARE};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::analysis::local_vector;
use crate::data::Dataset;
use crate::egress::{Egress, EgressError};
use crate::features;
use crate::policy::{DifferencingGuard, Policy};

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
    pub egress_log: PathBuf,
    pub faults: Faults,
    /// Queries this node helped unmask, and over which nodes (for the whole process).
    pub differencing: DifferencingGuard,
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
        let ca_der = pki::pem_to_der_certs(&ca_pem)?.into_iter().next().ok_or_else(|| {
            SessionError::Pki(pki::PkiError::Certificate(format!("{} holds no certificate", config.tls.ca.display())))
        })?;
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
            egress_log: config.egress_log.clone(),
            faults,
            differencing: DifferencingGuard::default(),
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
    let (mut egress, outbound) = Egress::open(&ctx.egress_log)?;
    egress
        .send(&FromNode::Hello { version: wire::VERSION.into(), software: SOFTWARE.into(), node: ctx.name.clone() })
        .await?;
    let mut inbound =
        client.session(outbound).await.map_err(|s| SessionError::Rejected(status_text(&s, true)))?.into_inner();
    let rng = SystemRandom::new();
    let mut active: Option<Active> = None;
    let mut customers_cache: Option<(time::Date, Vec<CustomerRfm>)> = None;
    loop {
        let msg = tokio::select! {
            _ = shutdown.changed() => return Ok(SessionEnd::Closed),
            m = inbound.next() => m,
        };
        let msg = match msg {
            None => return Ok(SessionEnd::Closed),
            Some(Err(s)) => return Err(SessionError::Rejected(status_text(&s, false))),
            Some(Ok(m)) => m,
        };
        let msg = match ToNode::try_from(msg) {
            Ok(m) => m,
            Err(e @ wire::WireError::Version { .. }) => return Err(e.into()),
            Err(e) => {
                // Say so: the coordinator drops this node from the round at once instead
                // of waiting for a deadline.
                tracing::warn!(node = %ctx.name, error = %e, "malformed message from coordinator");
                egress
                    .send(&FromNode::Refusal {
                        round: None,
                        reason: format!("malformed message from the coordinator: {e}"),
                    })
                    .await?;
                continue;
            }
        };
        match msg {
            ToNode::Welcome { coordinator } => tracing::info!(node = %ctx.name, %coordinator, "session open"),
            ToNode::RoundStart(start) => {
                let round = start.round;
                if active.as_ref().is_some_and(|a| !matches!(a.phase, Phase::Finished)) {
                    refuse(&mut egress, round, "node is busy with another round").await?;
                    continue;
                }
                if let Err(why) = ctx.policy.admit(&ctx.name, &start) {
                    tracing::warn!(node = %ctx.name, %round, %why, "refusing round");
                    refuse(&mut egress, round, &why).await?;
                    continue;
                }
                let reference = start.analysis.reference_date;
                if customers_cache.as_ref().map(|c| c.0) != Some(reference) {
                    let rfm = features::rfm(&ctx.dataset.purchases, reference).into_iter().map(|(_, r)| r).collect();
                    customers_cache = Some((reference, rfm));
                }
                // Unwrap safety: the cache was filled just above.
                let customers = &customers_cache.as_ref().unwrap().1;
                if let Err(e) = fedcrm_crypto::fixed::check_budget(start.invited.len() as u64, customers.len() as u64) {
                    refuse(&mut egress, round, &e.to_string()).await?;
                    continue;
                }
                let input = local_vector(&start.analysis, customers);
                let params = RoundParams { round, t: start.threshold, d: start.length };
                let (client, keys) = match ClientAdvertised::new(params, &ctx.name, &rng) {
                    Ok(x) => x,
                    Err(e) => {
                        refuse(&mut egress, round, &e.to_string()).await?;
                        continue;
                    }
                };
                let payload = secagg::key_signing_payload(&round, &ctx.name, &keys.enc, &keys.mask);
                let signature = ctx.signing.sign(&payload)?;
                egress.admit(round, start.analysis.kind.name());
                egress.send(&FromNode::Keys { round, enc: keys.enc, mask: keys.mask, signature }).await?;
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
                        refuse(&mut egress, round, &why).await?;
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
                    Err(e) => refuse(&mut egress, round, &e.to_string()).await?,
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
                    Err(e) => refuse(&mut egress, round, &e.to_string()).await?,
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
                    refuse(&mut egress, round, why).await?;
                    continue;
                }
                if let Err(why) = ctx.differencing.admit(&query_key(&a.start), &survivors, ctx.policy.min_participants)
                {
                    tracing::warn!(node = %ctx.name, %round, %why, "refusing unmask request");
                    a.phase = Phase::Finished;
                    refuse(&mut egress, round, &why).await?;
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
                        refuse(&mut egress, round, &e.to_string()).await?;
                    }
                }
            }
            ToNode::RoundEnd { round, released, message } => {
                tracing::info!(node = %ctx.name, %round, released, %message, "round ended");
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

/// The query a round computes, independent of its purpose text and round id.
fn query_key(start: &RoundStart) -> Vec<u8> {
    let mut a = start.analysis.clone();
    a.purpose.clear();
    prost::Message::encode_to_vec(&fedcrm_protocol::pb::Analysis::from(&a))
}

async fn refuse(egress: &mut Egress, round: RoundId, reason: &str) -> Result<(), SessionError> {
    egress.send(&FromNode::Refusal { round: Some(round), reason: reason.to_string() }).await?;
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
        if !start.invited.iter().any(|(n, _)| n == &k.node) {
            return Err(format!("roster names {}, who was not invited", k.node));
        }
        let id = pki::verify_cert(&ctx.ca_der, &k.certificate, now, Usage::Client)
            .map_err(|e| format!("certificate of {} rejected: {e}", k.node))?;
        if id.name != k.node {
            return Err(format!("roster entry {} carries the certificate of {}", k.node, id.name));
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
